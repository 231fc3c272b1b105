"""`make_api(svc)`: the FastAPI app of one replica, the protocols' routes over its `Service`
with the shared request gate (ids, admission, series), error bodies, security headers and
OpenAPI spec. Built inside the replica (FastAPI apps do not pickle); tests serve the same app
in-process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from serve.http.errors import add_error_handlers
from serve.http.gate import RequestGate
from serve.http.headers import add_security_headers
from serve.http.openapi import add_openapi_route
from serve.metrics import in_replica
from serve.protocols import health, model, page, predict, v2

if TYPE_CHECKING:
    from serve.service import Service


def make_api(svc: Service) -> FastAPI:
    app = FastAPI(
        title="modresnet",
        version="1",
        description="CIFAR-10 ModifiedResNet classifier: /predict for image files, the "
        "Open Inference Protocol v2 under /v2, a web page at /.",
        openapi_url=None,  # served by add_openapi_route, behind the API key when there is one
        docs_url=None,  # Swagger UI and ReDoc load third-party scripts: none on this origin
        redoc_url=None,
    )
    app.add_middleware(
        RequestGate,
        metrics=svc.metrics,
        admission=svc.admission,
        retry_after_s=svc.args.retry_after_s,
        echo_id=not in_replica(),
    )
    add_security_headers(app)  # added last: outermost, so the gate's answers carry them too
    add_error_handlers(app)
    page.register(app)
    add_openapi_route(app, svc.keys)
    predict.register(app, svc)
    health.register(app)
    v2.register(app, svc)
    model.register(app, svc)
    return app
