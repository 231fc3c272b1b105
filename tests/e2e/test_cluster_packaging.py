"""What goes to a cluster: the working_dir upload (an allowlist, staged by
jobs/client/submit.py) and the cluster launcher YAMLs against Ray's own schema (KubeRay:
tests/unit/test_kuberay_*.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from helpers.cluster import REPO

SENTINEL = "do-not-upload-4f1c9e"
NEVER_SHIPPED = {
    ".env": f"WANDB_API_KEY={SENTINEL}",
    "key.pem": f"-----BEGIN PRIVATE KEY-----{SENTINEL}",
    ".aws/credentials": f"[default]\naws_secret_access_key = {SENTINEL}",
    "modresnet/.env": SENTINEL,
    "modresnet/key.pem": SENTINEL,
    "serve/.aws/credentials": SENTINEL,
    "jobs/.hidden.py": SENTINEL,
    "cluster/kuberay/secret.env": SENTINEL,
    "data/cifar-10-batches-py/data_batch_1": SENTINEL,
    ".venv/bin/python": SENTINEL,
    ".git/HEAD": SENTINEL,
    "runs/demo/best/model.safetensors": SENTINEL,
    "modresnet/__pycache__/cli.cpython-311.pyc": SENTINEL,
    "notes.txt": SENTINEL,
}


def _checkout(root: Path, outside: Path) -> Path:
    """A copy of this checkout's source plus files that must never leave the machine, and
    symlinks out of it (a file and a folder) inside the shipped packages."""
    from jobs.client.submit import SHIPPED_DIRS, SHIPPED_FILES

    root.mkdir()
    for name in (*SHIPPED_DIRS, *SHIPPED_FILES, "tests", "README.md", "Makefile", ".gitignore"):
        entry = REPO / name
        if entry.is_dir():
            shutil.copytree(entry, root / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(entry, root / entry.name)
    for rel, text in NEVER_SHIPPED.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    outside.mkdir()
    (outside / "stolen.py").write_text(SENTINEL)
    (root / "modresnet" / "leak.py").symlink_to(outside / "stolen.py")
    (root / "jobs" / "linked").symlink_to(outside, target_is_directory=True)
    return root


@pytest.mark.ray  # Ray's packaging code, no Ray instance
def test_only_the_allowlist_leaves_the_machine(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    from jobs.client.submit import SHIPPED_DIRS, SHIPPED_FILES, SHIPPED_SUFFIXES, staged_working_dir

    checkout = _checkout(tmp_path / "checkout", tmp_path / "outside")
    pkg = tmp_path / "pkg.zip"
    with staged_working_dir(checkout) as working_dir:  # what `jobs submit` hands to Ray
        create_package(str(working_dir), pkg, include_gitignore=True)
    with zipfile.ZipFile(pkg) as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
        assert not [n for n in names if SENTINEL.encode() in z.read(n)]
    assert not {n for n in names if n.startswith(tuple(NEVER_SHIPPED))}
    assert "modresnet/leak.py" not in names and not [n for n in names if "linked" in n]
    for name in names:  # the packages' source and configs, the project metadata: nothing else
        top = name.split("/")[0]
        assert name in SHIPPED_FILES or (top in SHIPPED_DIRS and name.endswith(SHIPPED_SUFFIXES))
    # ...and all a job needs: every file of the packages git would commit, the project's metadata
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"]
        + ["modresnet", "jobs", "serve"],
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        needed = {f for f in listed.stdout.split() if (REPO / f).is_file()}
        assert needed <= names, f"not shipped (extend SHIPPED_SUFFIXES?): {needed - names}"
    assert {"pyproject.toml", "constraints.txt", "modresnet/cli.py", "cluster/aws.yaml"} <= names
    assert pkg.stat().st_size < 2 * 1024**2, f"package is {pkg.stat().st_size / 1024**2:.1f} MiB"


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
