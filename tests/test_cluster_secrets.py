"""No secret leaves the nodes' environment (jobs/runtime.py, "Secrets").

A real local cluster is started with `modresnet cluster up` from a shell whose environment holds
a random sentinel for WANDB_API_KEY, MODRESNET_API_KEY and AWS_SECRET_ACCESS_KEY. A train, a
tune and a serve job are submitted the way users do (`modresnet jobs submit`, W&B on, offline);
then no sentinel, and not the cluster token, is in anything Ray shows (State API, Jobs API, Serve
API) or in any file under the cluster's temp dir, its state dir or the run folders.

And the other side of the rule: W&B online on the driver, a Ray node without a key of its own,
is one line naming the fix, exit 2, before any training or search starts."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from cluster_helpers import CLIENT_VARS, cli, free_port, http

SECRET_VARS = ("WANDB_API_KEY", "MODRESNET_API_KEY", "AWS_SECRET_ACCESS_KEY")
TINY = ["--preset", "debug", "--subset", "200", "--set", "data.val_subset=100"]
TINY += ["--set", "data.test_subset=100"]
STATE_API = [  # what `ray list ... --detail`, `ray job`, `serve config` and the dashboard read
    "/api/v0/actors?limit=10000&detail=1",
    "/api/v0/tasks?limit=10000&detail=1",
    "/api/v0/jobs?limit=10000&detail=1",
    "/api/v0/workers?limit=10000&detail=1",
    "/api/v0/nodes?limit=10000&detail=1",
    "/api/v0/placement_groups?limit=10000&detail=1",
    "/api/v0/runtime_envs?limit=10000&detail=1",
    "/api/v0/objects?limit=10000&detail=1",
    "/api/jobs/",
    "/api/serve/applications/",
]


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


# ------------------------------------------------------------------------------------------
# the sentinels


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("modresnet-home")
    sentinels = {name: f"sentinel-{name.lower()}-{secrets.token_hex(12)}" for name in SECRET_VARS}
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS + SECRET_VARS}
    env.update(MODRESNET_HOME=str(home), RAY_AUTH_MODE="disabled", COLUMNS="200")
    env.update(WANDB_MODE="offline", **sentinels)  # the shell the user runs `cluster up` from
    up = cli("cluster", "up", "--workers", "2", "--cpus-per-node", "1", env=env, timeout=360)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        exports = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
        state = json.loads((home / "cluster" / "state.json").read_text())
        yield SimpleNamespace(
            home=home,
            env={**env, **exports},
            state=state,
            token=Path(state["token_path"]).read_text().strip(),
            address=exports["RAY_ADDRESS"],
            sentinels=sentinels,
        )
    finally:
        if (home / "cluster" / "state.json").exists():
            cli("cluster", "down", env=env, timeout=120)


def _submit(c, *args: str) -> str:
    sub = cli("jobs", "submit", *args, env=c.env)
    assert sub.returncode == 0, sub.stderr[-3000:]
    return sub.stdout.strip().splitlines()[-1]


def _follow(c, job_id: str) -> str:
    follow = cli("jobs", "logs", job_id, "--follow", env=c.env, timeout=400)
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-2000:]
    return follow.stdout


def _hits(where: str, data: bytes, needles: dict[str, str]) -> list[tuple[str, str, str]]:
    """(where, which secret, the text around it) for each secret found in `data`."""
    out = []
    for name, value in needles.items():
        at = data.find(value.encode())
        if at >= 0:
            out.append((where, name, data[max(0, at - 300) : at + 100].decode(errors="replace")))
    return out


@pytest.mark.ray
def test_no_secret_in_ray_state_jobs_serve_or_files_after_train_tune_and_serve(cluster, tmp_path):
    c = cluster
    started = time.monotonic()
    # train (a Ray Train worker with W&B settings in its runtime_env) and tune (a W&B logging
    # actor per trial) at once, one CPU each; then serve the trained run
    storage = ["--storage", str(tmp_path)]
    train = ["train", *TINY, "--epochs", "1", "--workers", "1", *storage, "--name", "secret-train"]
    tune = ["tune", *TINY, "--samples", "1", "--max-epochs", "1", "--grace-period", "1"]
    tune += ["--concurrent", "1", "--cpus-per-trial", "1", *storage, "--name", "secret-tune"]
    train, tune = _submit(c, *train), _submit(c, *tune)
    with ThreadPoolExecutor(2) as pool:
        logs = list(pool.map(lambda job: _follow(c, job), (train, tune)))
    assert re.search(r"epoch\s+1/1\s+train", logs[0]), logs[0][-3000:]
    run, exp = tmp_path / "secret-train", tmp_path / "secret-tune"
    assert sorted((run / "wandb").glob("offline-run-*")), "train logged nothing to W&B"
    assert sorted(exp.glob("run_trial_*/wandb/offline-run-*")), "tune logged nothing to W&B"
    port = free_port()
    served = ["--backend", "torch", "--max-replicas", "1", "--replica-cpus", "0.5"]
    serve = _submit(c, "--", "serve", str(run), "--address", "auto", "--port", str(port), *served)
    assert "serving" in _follow(c, serve)
    model = f"http://127.0.0.1:{port}/model"
    assert http(model)[0] == 401  # the replicas read MODRESNET_API_KEY from their nodes
    assert http(model, c.sentinels["MODRESNET_API_KEY"])[0] == 200
    print(f"jobs done in {time.monotonic() - started:.0f}s")

    needles = {**c.sentinels, "RAY_AUTH_TOKEN": c.token}
    found = []
    for path in STATE_API + [f"/api/jobs/{job}" for job in (train, tune, serve)]:
        code, body = http(c.address + path, c.token)
        assert code == 200, (path, body[:300])
        found += _hits(path, body, needles)
    searched = 0
    for root in (Path(c.state["temp_dir"]), c.home / "cluster", tmp_path):
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file() or path == Path(c.state["token_path"]):
                continue
            try:
                data = path.read_bytes()
            except OSError:  # a file Ray removed meanwhile
                continue
            searched += 1
            found += _hits(str(path), data, needles)
    assert searched > 100, searched
    assert found == []
