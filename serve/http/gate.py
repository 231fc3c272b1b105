"""The gate every request of a replica passes once, just inside the security headers: it is
given its id (request_ids.py), admitted or refused with 429 (`Admission`), answered with a
500 naming its id if a route fails, told which version answered it (X-Model-Version, from what
the route recorded in its scope, serve/service.py `choose`), and counted in the replica's series
(serve/metrics.py) by route, status code and that version.

The app sheds load itself, not Serve, so that every 429 is counted and is the app's JSON error
with its security headers and request id; Serve's own limits stand behind it as a backstop
(serve/app.py `serve_limits`)."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.http.errors import error_response, log
from serve.http.headers import INTERNAL_ERROR
from serve.http.request_ids import HEADER, request_id
from serve.metrics import VERSION_SCOPE_KEY, Metrics, route_of

VERSION_HEADER = b"x-model-version"


class Admission:
    """At most `ongoing` requests at work at once and `queued` more waiting for a turn (-1: no
    bound); one past that is refused at once. What Serve's max_ongoing_requests and
    max_queued_requests do for a replica."""

    def __init__(self, ongoing: int, queued: int) -> None:
        self.ongoing = ongoing
        self.queued = queued
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None  # made on the replica's event loop

    async def enter(self) -> bool:
        """Take a slot, waiting in line if there is room there; False: refused."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.ongoing)
        if self._slots.locked():
            if 0 <= self.queued <= self.waiting:
                return False
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        return True

    def leave(self) -> None:
        assert self._slots is not None
        self._slots.release()


class RequestGate:
    """ASGI middleware: ids, admission, 500s and the request series of one replica's app.
    `echo_id`: add X-Request-Id to responses (where no Serve server in front does)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        admission: Admission,
        retry_after_s: int,
        echo_id: bool,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.admission = admission
        self.retry_after = {"Retry-After": str(retry_after_s)}
        self.echo_id = echo_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(scope)
        path, root = scope["path"], scope.get("root_path", "")
        route = route_of((path[len(root) :] if root and path.startswith(root) else path) or "/")
        status = 0
        id_header = (HEADER, rid.encode())

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [id_header] if self.echo_id else []
                version = scope.get(VERSION_SCOPE_KEY)
                if version is not None:
                    extra.append((VERSION_HEADER, version.encode()))
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if not await self.admission.enter():
            refused = error_response(
                429,
                f"overloaded: this replica has {self.admission.ongoing} requests at work and "
                f"{self.admission.queued} waiting; retry after {self.retry_after['Retry-After']} s",
                rid,
                self.retry_after,
            )
            await refused(scope, receive, send_counted)
            self.metrics.request(route, 429, time.perf_counter() - start)
            return
        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            log.exception("request %s: 500 on %s", rid, route)
            if status:  # the response had begun: nothing more to send
                raise
            await error_response(500, INTERNAL_ERROR, rid)(scope, receive, send_counted)
        finally:
            self.admission.leave()
            if status:  # else the client left before its answer (the task was cancelled)
                seconds = time.perf_counter() - start
                self.metrics.request(route, status, seconds, scope.get(VERSION_SCOPE_KEY, ""))
