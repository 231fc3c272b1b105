"""Helpers of test_storage.py: a real moto S3 server (the body of its module-scoped `s3`
fixture), the objects under a prefix, and the CLI as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers.ports import free_port
from modresnet import storage

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "modresnet.cli"]
MOTO = Path(sys.executable).with_name("moto_server")
BUCKET = "modresnet-test"


def moto_s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, a bucket in it, and the environment
    (module-wide, so Ray workers started by subprocesses inherit it)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MODRESNET_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _objects(prefix: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    fs, root = storage.parse(f"s3://{BUCKET}/{prefix}").filesystem()
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    out = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as f:
                out[i.path[len(root) + 1 :]] = f.read()
    return out


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "WANDB_MODE", "WANDB_API_KEY")
    }
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
