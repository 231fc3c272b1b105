"""Request ids: every response carries `X-Request-Id`, the client's when it sent one sane id
(1-128 of `A-Z a-z 0-9 . _ : -`), else a new one; error bodies and the replica's log lines
for errors name it too.

Serve's HTTP servers (its proxy, and each replica's own server behind HAProxy) put
`X-Request-Id` on every response themselves: whatever id the request arrived with, else one
Serve made. `SaneRequestIds` runs in front of them (serve/environment.py names
`serve_middlewares` as Serve's HTTP callback) and swaps an id that is not sane for a new one
before Serve reads it, so Serve's header, its log lines and the app's agree. The app adds the
header itself only where no Serve server does (in-process)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = b"x-request-id"
SCOPE_KEY = "modresnet.request_id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_id() -> str:
    return uuid.uuid4().hex


def sane_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's X-Request-Id if it sent exactly one and it is sane, else None."""
    ids = [value for name, value in headers if name == HEADER]
    if len(ids) == 1 and _SANE.fullmatch(ids[0]):
        return ids[0].decode()
    return None


def request_id(scope: Scope) -> str:
    """The id of the request of `scope`: its sane X-Request-Id, else a new one (kept in the
    scope, so every part of the app names the same)."""
    found = scope.get(SCOPE_KEY)
    if found is None:
        found = scope[SCOPE_KEY] = sane_id(scope.get("headers", ())) or new_id()
    return str(found)


class SaneRequestIds:
    """ASGI middleware in front of Serve's own: a request whose X-Request-Id is not one sane id
    arrives with a new one instead (a request with none keeps none: Serve makes one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = list(scope.get("headers", ()))
            if any(name == HEADER for name, _ in headers) and sane_id(headers) is None:
                kept = [(name, value) for name, value in headers if name != HEADER]
                scope = {**scope, "headers": [*kept, (HEADER, new_id().encode())]}
        await self.app(scope, receive, send)


def serve_middlewares() -> list[Middleware]:
    """Serve's HTTP callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the middlewares its
    HTTP servers run in front of their own."""
    return [Middleware(SaneRequestIds)]
