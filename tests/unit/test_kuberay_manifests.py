"""What the Ray pods need, what the RayService serves, and the project's own conventions in
the KubeRay manifests (Ray version, token auth, 0-CPU head, no secret in args, ServeArgs)."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from helpers.kuberay import (
    KUBERAY,
    REPO,
    cluster_spec,
    docs_of,
    manifests,
    pod_templates,
)

# ------------------------------------------------------------------------------------------
# 6. what the Ray pods need, and what the RayService serves


def test_every_ray_container_has_a_memory_backed_dev_shm():
    """Ray's object store lives in /dev/shm; the container runtime's default is 64 MiB."""
    for name, doc in manifests():
        for group, template in pod_templates(doc):
            if group == "submitter":
                continue
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            for c in template["spec"]["containers"]:
                mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
                assert mounts, f"{name} {group}/{c['name']}: no /dev/shm volume"
                assert volumes[mounts[0]["name"]].get("emptyDir", {}).get("medium") == "Memory"


def entrypoint_run_dir(doc: dict) -> str:
    args = shlex.split(doc["spec"]["entrypoint"])
    return f"{args[args.index('--storage') + 1]}/{args[args.index('--name') + 1]}"


def test_the_rayservice_serves_a_run_a_rayjob_writes():
    (service,) = docs_of("RayService")
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    runs = {entrypoint_run_dir(d): d["metadata"]["name"] for d in docs_of("RayJob")}
    checkpoint = app["args"]["checkpoint"].rstrip("/")
    producer = next(
        (job for run, job in runs.items() if checkpoint == run or checkpoint.startswith(run + "/")),
        None,
    )
    assert producer, f"{checkpoint} is written by none of {runs}"
    # a manifest that says it feeds rayservice.yaml must be the one that does
    for path in KUBERAY.glob("rayjob-*.yaml"):
        comments = " ".join(
            line for line in path.read_text().splitlines() if line.lstrip().startswith("#")
        )
        if re.search(r"for rayservice\.yaml|rayservice\.yaml serves", comments):
            assert yaml.safe_load(path.read_text())["metadata"]["name"] == producer, path.name


# ------------------------------------------------------------------------------------------
# 7. the project's own conventions: Ray version, token auth, 0-CPU head, no secret in args


@pytest.mark.parametrize(
    "name,kind",
    [
        ("raycluster.yaml", "RayCluster"),
        ("rayjob-train.yaml", "RayJob"),
        ("rayjob-tune.yaml", "RayJob"),
        ("rayservice.yaml", "RayService"),
    ],
)
def test_kuberay_manifests(name, kind):
    doc = yaml.safe_load((KUBERAY / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    for spec in [cluster_spec(doc)] if cluster_spec(doc) else []:
        assert spec["rayVersion"] == "2.60.0"
        assert spec["authOptions"] == {"mode": "token"}
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        groups = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for g in spec["workerGroupSpecs"]:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for template in groups:
            for c in template["spec"]["containers"]:
                assert c["image"].startswith("<registry>/modresnet:")
                assert {"cpu", "memory"} <= set(c["resources"]["requests"])
                assert c["resources"]["requests"] == c["resources"]["limits"]
                assert any(m["mountPath"] == "/mnt/modresnet" for m in c["volumeMounts"])
                for e in c.get("env", []):  # secrets only by reference
                    assert "value" not in e or not re.search("KEY|TOKEN|SECRET", e["name"])
    text = (REPO / "cluster" / "kuberay" / name).read_text()
    assert not re.search(r"(api_key|token)\s*:\s*[A-Za-z0-9]{16,}", text, re.I)
    if kind == "RayJob":
        command = "train" if "train" in name else "tune"
        submitter = doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
        assert (
            submitter["image"]
            == cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        )
        assert doc["spec"]["entrypoint"].startswith(f"python -m modresnet.cli {command} ")
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
        assert not [k for k in env if re.search("KEY|TOKEN|SECRET|PASSWORD", k)]
    if kind == "RayCluster":
        assert {g["groupName"] for g in doc["spec"]["workerGroupSpecs"]} == {"cpu", "gpu"}
        gpu = next(g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    if kind == "RayService":
        serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
        app = serve_cfg["applications"][0]
        module, _, attr = app["import_path"].partition(":")
        assert (REPO / module.replace(".", "/")).with_suffix(".py").exists()
        assert f"def {attr}(" in (REPO / module.replace(".", "/")).with_suffix(".py").read_text()
        from serve.app import ServeArgs  # the args validate against the real builder's model

        args = ServeArgs.model_validate(app["args"])
        assert args.api_key_env == "MODRESNET_API_KEY"
        assert not [k for k in app["args"] if re.search("key$|token|secret|password", k, re.I)]


# ------------------------------------------------------------------------------------------
# 8. ServeArgs: a misspelt serveConfigV2 arg is an error that names it


def test_rayservice_args_build_and_a_misspelt_arg_is_named():
    pytest.importorskip("ray.serve")
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import ServeArgs, build_app

    (service,) = docs_of("RayService")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    ServeArgs.model_validate(args)
    misspelt = {**args, "max_replica": 8}
    del misspelt["max_replicas"]
    # exactly what `serve deploy` and the RayService's Serve controller call
    with pytest.raises(ValidationError) as err:
        call_user_app_builder_with_args_if_necessary(build_app, misspelt)
    message = str(err.value)
    assert "max_replica" in message and "did you mean 'max_replicas'" in message, message
    with pytest.raises(ValidationError, match="unknown"):
        ServeArgs(checkpoint="x", threds=2)
    # every other check still answers as before
    with pytest.raises(ValidationError, match="below min_replicas"):
        ServeArgs(checkpoint="x", min_replicas=3, max_replicas=2)
