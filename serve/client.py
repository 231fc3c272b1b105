"""HTTP client for a running modresnet Serve app (`modresnet predict --url`, the demo)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from modresnet.errors import UserError


class ClientError(UserError):
    """The server refused the request or could not be reached; the message says why."""


def auth_headers(api_key: str | None = None, env: str = "MODRESNET_API_KEY") -> dict[str, str]:
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
