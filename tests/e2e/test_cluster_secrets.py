"""W&B online on the driver, a Ray node without a key of its own, is one line naming the fix,
exit 2, before any training or search starts (jobs/runtime.py, "Secrets"). The other side of
the rule, no secret leaving the nodes' environment, is tested on test_cluster.py's cluster."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.cluster import CLIENT_VARS, cli

TINY = ["--preset", "debug", "--subset", "200", "--set", "data.val_subset=100"]
TINY += ["--set", "data.test_subset=100"]


# ------------------------------------------------------------------------------------------
# W&B online on the driver, no key on the nodes


@pytest.fixture()
def keyless_ray():
    """A Ray whose node has no WANDB_API_KEY (its processes inherit this environment)."""
    import ray

    from jobs.runtime import env_override

    ray.shutdown()
    with env_override({"WANDB_API_KEY": None, "WANDB_MODE": None}):
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_online_wandb_without_a_key_on_the_node_is_one_line_before_training(keyless_ray, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS + ("WANDB_MODE",)}
    env["WANDB_API_KEY"] = "a-key-only-this-shell-has"
    base = ["--address", keyless_ray, *TINY, "--storage", str(tmp_path)]
    commands = [
        ["train", *base, "--epochs", "1", "--workers", "1", "--max-failures", "3"],
        ["tune", *base, "--samples", "1", "--max-epochs", "1", "--cpus-per-trial", "1"],
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: cli(*args, env=env, timeout=240), commands))
    for (command, *_), r in zip(commands, results, strict=True):
        assert r.returncode == 2, (command, r.stdout[-2000:], r.stderr[-3000:])
        error = r.stderr.strip()
        assert "Traceback" not in r.stderr and len(error.splitlines()) == 1, (command, error)
        assert "has no WANDB_API_KEY" in error and "modresnet cluster up" in error, error
        assert "WANDB_MODE=offline" in error, error
    assert "Ray Train worker of rank 0" in results[0].stderr
    assert not re.search(r"epoch\s+1/1", results[0].stdout)  # it failed before training
    assert not list(tmp_path.rglob("offline-run-*")) and not list(tmp_path.rglob("run-*.wandb"))
