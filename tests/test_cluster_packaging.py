"""What goes to a cluster, checked without one: the working_dir upload (.rayignore), the
cluster launcher YAMLs against Ray's own schema, and the Dockerfile."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from cluster_helpers import REPO

# ------------------------------------------------------------------------------------------
# the upload: .rayignore keeps the working_dir package small (no cluster needed)


@pytest.mark.ray  # reads Ray's packaging code / schema, no Ray instance
def test_rayignore_keeps_the_package_small(tmp_path):
    from ray._private.runtime_env.packaging import _get_ignore_file, create_package

    ignored = _get_ignore_file(REPO, ".rayignore")
    assert ignored is not None, ".rayignore missing at the repo root"
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "data/cifar-10-batches-py/data_batch_1",
        "runs/demo/best/model.safetensors",
        "checkpoints/x.pt",
        "wandb/run-1/files",
        "model.onnx",
        "modresnet-runs/a/metrics.jsonl",
    ):
        assert ignored(REPO / path), f"{path} would be uploaded"
    for path in ("modresnet/cli.py", "jobs/submit.py", "serve/app.py", "pyproject.toml"):
        assert not ignored(REPO / path), f"{path} would be left out"
    # .rayignore alone (without .gitignore) must keep it small
    pkg = tmp_path / "pkg.zip"
    create_package(str(REPO), pkg, include_gitignore=False)
    size = pkg.stat().st_size
    assert size < 10 * 1024**2, f"working_dir package is {size / 1024**2:.1f} MiB"
    names = zipfile.ZipFile(pkg).namelist()
    assert any(n.endswith("modresnet/cli.py") for n in names)
    assert not [n for n in names if re.search(r"(^|/)(\.git|\.venv|runs|data|wandb)/", n)]


# ------------------------------------------------------------------------------------------
# cloud configs: cluster launcher YAMLs against Ray's own schema (KubeRay: tests/test_kuberay_*.py)


def _yaml(name: str):
    import yaml

    return yaml.safe_load((REPO / "cluster" / name).read_text())


@pytest.mark.ray  # reads Ray's packaging code / schema, no Ray instance
@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_match_rays_schema_and_are_locked_down(name):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = _yaml(name)
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert any(w["docker"]["worker_image"].endswith("-gpu") for w in workers if "docker" in w)
    assert cfg["docker"]["image"].endswith("-cpu") and len(workers) >= 2
    token = "/home/ray/.modresnet/cloud_token"
    assert token in cfg["file_mounts"]
    assert any(f"chmod 600 {token}" in c for c in cfg["setup_commands"])
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start and f"RAY_AUTH_TOKEN_PATH={token}" in start
    head = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head and "--num-cpus=0" in head
    assert any("/mnt/modresnet" in c and "mount" in c for c in cfg["initialization_commands"])
    assert "-v /mnt/modresnet:/mnt/modresnet" in cfg["docker"]["run_options"]


def test_dockerfile_pins_ray_and_bakes_no_secret():
    text = (REPO / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=rayproject/ray:2\.60\.0-py311-cpu$", text, re.M)
    assert "ray[default,train,tune,serve]==2.60.0" in text
    assert "RAY_AUTH_MODE=token" in text
    assert not re.search(r"RAY_AUTH_TOKEN=|WANDB_API_KEY=|MODRESNET_API_KEY=", text)
