"""The security headers every response of the Serve apps carries, errors and 404s included."""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.http.errors import error_response, log
from serve.http.request_ids import request_id
from serve.protocols.page import PAGE


def _inline_source(tag: str) -> str:
    """The CSP source that allows the page's one inline <script> or <style>, and nothing else
    inline: the sha256 of its text."""
    found = re.search(rf"<{tag}>(.*?)</{tag}>", PAGE, re.S)
    assert found is not None, f"page.html has no <{tag}>"
    digest = hashlib.sha256(found.group(1).encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# The page runs only its own script and style, loads images only from itself (its sample strip
# is data: URIs, the preview of the user's file a blob:), talks only to its own origin and is
# never framed; no response is cached or sniffed, no URL leaks as a Referer.
CSP = (
    f"default-src 'self'; script-src {_inline_source('script')}; "
    f"style-src {_inline_source('style')}; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
INTERNAL_ERROR = "internal error; the replica's log has the traceback"


class SecurityHeaders:
    """ASGI middleware that adds SECURITY_HEADERS to every HTTP response it passes, errors and
    404s included (pure ASGI: no per-request task or body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_RAW_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_security_headers(app: FastAPI) -> None:
    """SECURITY_HEADERS on every response of `app`. A 500 that reaches Starlette's outermost
    middleware is sent past any other, so its handler sets them itself."""
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, err: Exception) -> JSONResponse:
        rid = request_id(request.scope)
        log.error("request %s: 500 %s: %s", rid, type(err).__name__, err)
        response = error_response(500, INTERNAL_ERROR, rid)
        response.headers.update(SECURITY_HEADERS)
        return response
