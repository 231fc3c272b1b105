"""HTTP client for a running modresnet Serve app (`modresnet predict --url`, the demo), and
the poll that waits for one to answer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from modresnet.errors import UserError
from serve.args import ServeArgs

API_KEY_ENV = ServeArgs.model_fields["api_key_env"].default


class ClientError(UserError):
    """The server refused the request or could not be reached; the message says why."""


def auth_headers(api_key: str | None = None, env: str = API_KEY_ENV) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def predict_files(
    url: str,
    files: list[tuple[str, bytes]],
    top_k: int = 5,
    api_key: str | None = None,
    timeout: float = 60,
) -> list[dict]:
    """POST named image bytes to {url}/predict; one `{"filename", "top_k": [...]}` per file."""
    endpoint = url.rstrip("/") + "/predict"
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    try:
        r = httpx.post(
            endpoint,
            files=parts,
            params={"top_k": top_k},
            headers=auth_headers(api_key),
            timeout=timeout,
        )
    except httpx.HTTPError as err:
        raise ClientError(f"{endpoint}: cannot reach the server ({err})") from None
    if r.status_code != 200:
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text[:200]
        raise ClientError(f"{endpoint}: HTTP {r.status_code}: {message}")
    return r.json()["predictions"]


def predict_paths(
    url: str, paths: list[Path], top_k: int = 5, api_key: str | None = None
) -> list[dict]:
    files = []
    for path in paths:
        try:
            files.append((Path(path).name, Path(path).read_bytes()))
        except OSError as err:
            raise ClientError(f"{path}: cannot read ({err.strerror})") from None
    return predict_files(url, files, top_k, api_key)


def wait_ready(
    url: str, timeout: float = 120, headers: dict | None = None, sha256: str | None = None
) -> dict:
    """Poll GET {url}/model until it answers (and serves `sha256`, when given)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url.rstrip("/") + "/model", headers=headers, timeout=5)
            if r.status_code == 200 and (sha256 is None or r.json()["sha256"] == sha256):
                return r.json()
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as err:
            last = repr(err)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last})")
