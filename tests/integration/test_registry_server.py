"""The registry through a real `mlflow server` on 127.0.0.1 (SQLite backend, its own artifact
folder, artifacts proxied): what a user with an existing MLflow server does. Register, alias,
show and fetch with `--registry http://...`, and MLFLOW_TRACKING_URI in its place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers.ports import free_port

from modresnet import config as configs
from modresnet.checkpoint import load_model
from modresnet.local import train_local
from modresnet.registry import open_registry, resolve_checkpoint

CLI = [sys.executable, "-m", "modresnet.cli"]
MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job workers
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "mlflow server did not answer /health"
        time.sleep(0.5)
    yield uri, root / "artifacts"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("server-run") / "run"
    cfg = configs.resolve("debug", overrides={"data.data_dir": str(data_dir)})
    train_local(cfg, path, info=lambda _: None)
    return path


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_register_alias_show_and_fetch_through_a_server(server, run, tmp_path, monkeypatch):
    uri, artifacts = server
    monkeypatch.setenv("MODRESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODRESNET_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registered = _cli("models", "register", str(run), "--name", "served", "--registry", uri)
    assert registered.returncode == 0, registered
    aliased = _cli("models", "alias", "served", "1", "champion", MLFLOW_TRACKING_URI=uri)
    assert aliased.returncode == 0, aliased
    shown = _cli("models", "show", "served@champion", "--json", "--registry", uri)
    version = json.loads(shown.stdout)
    test = json.loads((run / "test.json").read_text())
    assert (version["label"], version["sha256"]) == ("served/1", test["sha256"])
    assert version["source"].startswith("mlflow-artifacts:/"), version["source"]
    for done in (registered, aliased, shown):
        assert not any(s in done.stdout + done.stderr for s in ("INFO", "View run")), done

    stored = sorted(p.name for p in artifacts.rglob("*") if p.is_file())
    assert stored == ["model.json", "model.safetensors"]
    assert not (tmp_path / "runs" / "registry").exists()  # nothing embedded beside the server

    folder, v = resolve_checkpoint("models:/served@champion", uri)
    assert v is not None and v.label == "served/1"
    assert load_model(folder).sha256 == test["sha256"]
    assert open_registry(uri).names() == ["served"]
