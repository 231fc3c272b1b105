"""The Open Inference Protocol's server health: GET live and ready, answered by the health app
(serve/app.py `Health`, at /v2/health, where a probe never waits for a request slot of the
model) and by each replica itself (where a deployment has no health app, e.g. the KubeRay
RayService, and in-process)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response


def add_routes(app: FastAPI, is_ready: Callable[[], Awaitable[bool]], prefix: str = "") -> None:
    """`{prefix}/live` (200 while the process answers) and `{prefix}/ready` (200 when
    `is_ready()`, else 503)."""

    def live() -> dict:
        return {"live": True}

    async def ready() -> Response:
        ok = await is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    app.add_api_route(prefix + "/live", live, methods=["GET"])
    app.add_api_route(prefix + "/ready", ready, methods=["GET"], response_model=dict)


async def _constructed() -> bool:
    return True


def register(app: FastAPI) -> None:
    """A replica's own /v2/health: live and ready once it is constructed (model loaded)."""
    add_routes(app, _constructed, "/v2/health")
