"""The API key: read once per replica from the environment variable that `api_key_env`
*names* (never from the args, which `serve config` shows), then checked on each request as
`Authorization: Bearer <key>`."""

from __future__ import annotations

import hmac
import os
import socket

from fastapi import Request

from serve.args import ServeArgs
from serve.http.errors import ApiError


class MissingApiKey(RuntimeError):
    """Auth was required but this replica's environment lacks the key."""


class ApiKeys:
    """The accepted keys: the env var holds one key, or several comma-separated (rotation:
    "new,old" while clients switch over); none means no auth."""

    def __init__(self, args: ServeArgs) -> None:
        value = os.environ.get(args.api_key_env) or ""
        self.keys = [k.strip() for k in value.split(",") if k.strip()]
        if not self.keys and args.api_key_required:
            raise MissingApiKey(
                f"api_key_required is set but the environment variable {args.api_key_env} is "
                f"unset or empty in this replica (node {socket.gethostname()}); refusing to "
                f"serve without auth. Fix: export {args.api_key_env} on every Ray node before "
                f"`ray start` (replicas inherit the raylet's environment), then deploy again."
            )

    def check(self, request: Request) -> None:
        """Raise a 401 unless the request carries one of the keys (or there are none)."""
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`")
        sent = token.strip().encode()
        if not any([hmac.compare_digest(sent, key.encode()) for key in self.keys]):
            raise ApiError(401, "wrong API key")
