"""One replica of the model app: its state (model, backend, decode pool, batching) and its
HTTP routes (FastAPI). Free of Serve's deployment machinery, so tests run it in-process with
`make_api(Service(args))`; serve/app.py wraps the same class as the Serve ingress."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modresnet.rundir import test_result
from serve import api, schemas, v2binary
from serve.api import ApiError, error_response
from serve.args import ServeArgs
from serve.batcher import Batcher

PAGE = (Path(__file__).parent / "page.html").read_text()


def _inline_source(tag: str) -> str:
    """The CSP source that allows the page's one inline <script> or <style>, and nothing else
    inline: the sha256 of its text."""
    found = re.search(rf"<{tag}>(.*?)</{tag}>", PAGE, re.S)
    assert found is not None, f"page.html has no <{tag}>"
    digest = hashlib.sha256(found.group(1).encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# Every response of the app carries these: the page runs only its own script and style, loads
# images only from itself (and the blob: preview of the user's file), talks only to its own
# origin and is never framed; no response is cached or sniffed, no URL leaks as a Referer.
CSP = (
    f"default-src 'self'; script-src {_inline_source('script')}; "
    f"style-src {_inline_source('style')}; img-src 'self' blob:; object-src 'none'; "
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
    """SECURITY_HEADERS on every response of `app`. A 500 is sent by Starlette's outermost
    middleware, past any other, so its handler sets them itself."""
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, err: Exception) -> JSONResponse:
        response = error_response(500, "internal error; the replica's log has the traceback")
        response.headers.update(SECURITY_HEADERS)
        return response


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody} for code in (400, 401, 408, 413, 415, 429, 503)
}


class MissingApiKey(RuntimeError):
    """Auth was required but this replica's environment lacks the key."""


def read_api_keys(args: ServeArgs) -> list[str] | None:
    """The accepted keys: the env var holds one key, or several comma-separated (rotation:
    "new,old" while clients switch over), None for no auth."""
    value = os.environ.get(args.api_key_env) or ""
    keys = [k.strip() for k in value.split(",") if k.strip()] or None
    if keys is None and args.api_key_required:
        raise MissingApiKey(
            f"api_key_required is set but the environment variable {args.api_key_env} is unset "
            f"or empty in this replica (node {socket.gethostname()}); refusing to serve without "
            f"auth. Fix: export {args.api_key_env} on every Ray node before `ray start` (replicas "
            f"inherit the raylet's environment), then deploy again."
        )
    return keys


class Service:
    """One replica's state and routes, free of Ray so tests can run it in-process
    (`make_api(Service(args))`); `Classifier` below is the same class as a Serve ingress."""

    def __init__(self, args: dict) -> None:
        from modresnet.checkpoint import load_model
        from serve.backends import make_backend
        from serve.decode import DecodePool

        self.args = ServeArgs.model_validate(args)
        self._api_keys = read_api_keys(self.args)  # first: fail before the slow model load
        torch.set_num_threads(self.args.threads)
        start = time.perf_counter()
        self.loaded = load_model(self.args.checkpoint)
        self.backend = make_backend(self.args.backend, self.loaded, self.args.threads)
        self.load_s = time.perf_counter() - start
        self.classes = self.loaded.classes
        self.decoder = DecodePool(
            self.args.decode_workers,
            self.args.decode_timeout_s,
            self.args.max_pixels,
            self.args.request_pixels,
        )
        self._batcher = Batcher(
            self._infer, self.args.max_batch_size, self.args.batch_wait_timeout_s
        )
        self.batch_sizes: Counter[int] = Counter()
        self.failures = 0
        self.requests = 0

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    # --- health, batching -----------------------------------------------------------------
    def check_health(self) -> None:
        if self.failures >= 3:
            raise RuntimeError(f"{self.failures} inference failures in a row")

    async def _infer(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        self.batch_sizes[len(images)] += 1
        try:
            probs = await asyncio.to_thread(self.backend.probabilities, torch.stack(images))
        except Exception:
            self.failures += 1
            raise
        self.failures = 0
        return list(probs)

    async def _probabilities(self, images: list[torch.Tensor]) -> np.ndarray:
        rows = await asyncio.gather(*(self._batcher(img) for img in images))
        return np.stack(rows).astype(np.float32)

    def _auth(self, request: Request) -> None:
        if self._api_keys is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`")
        sent = token.strip().encode()
        if not any([hmac.compare_digest(sent, key.encode()) for key in self._api_keys]):
            raise ApiError(401, "wrong API key")

    # --- routes ---------------------------------------------------------------------------
    def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def predict(self, request: Request, top_k: int | None = None) -> schemas.PredictResponse:
        """Classify one or more images: multipart field `files`, or JSON base64 `images`."""
        self._auth(request)
        body = await api.read_body(request, self.args.max_body_bytes, self.args.body_timeout_s)
        images, names, body_k = await api.parse_predict(
            request, body, self.args.max_images, self.decoder
        )
        if len(images) > self.args.max_images:
            raise ApiError(
                413, f"{len(images)} images in one request; the limit is {self.args.max_images}"
            )
        k = top_k or body_k or self.args.top_k
        if not 1 <= k <= len(self.classes):
            raise ApiError(400, f"top_k: must be between 1 and {len(self.classes)}; got {k}")
        probs = await self._probabilities(images)
        self.requests += 1
        rows = api.top_k_rows(probs, self.classes, k)
        return schemas.PredictResponse(
            model_sha256=self.loaded.sha256,
            backend=self.backend.name,
            predictions=[
                schemas.ImagePrediction(index=i, filename=n, top_k=r)
                for i, (n, r) in enumerate(zip(names, rows, strict=False))
            ],
        )

    def live(self) -> dict:
        return {"live": True}

    def ready(self) -> dict:
        return {"ready": True}

    def model_metadata(self, request: Request) -> dict:
        self._auth(request)
        return {
            "name": schemas.MODEL_NAME,
            "versions": [self.loaded.sha256[:12]],
            "platform": "onnxruntime_onnx"
            if self.backend.name in ("onnx", "int8")
            else "pytorch_torch",
            # One input. Also accepted under the same name: datatype FP32 (0..1) and/or
            # shape [-1, 3, 32, 32] (NCHW); the request's datatype and shape choose.
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.classes)]}
            ],
        }

    def model_ready(self) -> dict:
        return {"name": schemas.MODEL_NAME, "ready": True}

    async def infer(self, request: Request) -> schemas.InferResponse | Response:
        """Open Inference Protocol v2: input `input` UINT8/FP32 [N,32,32,3] or [N,3,32,32]."""
        self._auth(request)
        req, x = await api.read_infer(request, self.args)
        probs = await self._probabilities(list(x))
        self.requests += 1
        response = schemas.InferResponse(
            model_name=schemas.MODEL_NAME,
            model_version=self.loaded.sha256[:12],
            id=req.id,
            outputs=[
                schemas.InferOutput(
                    name="probabilities",
                    shape=list(probs.shape),
                    datatype="FP32",
                    data=probs.reshape(-1).tolist(),
                )
            ],
        )
        if not v2binary.wants_binary_output(req.parameters, req.outputs):
            return response
        body, json_size = v2binary.encode_response(
            response.model_dump(exclude_none=True), {"probabilities": probs}
        )
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_size)},
        )

    def model_info(self, request: Request) -> dict:
        """The checkpoint this replica serves, and its batching statistics."""
        self._auth(request)
        cfg = self.loaded.config
        metrics = self.loaded.meta.get("metrics", {})
        test = test_result(self.loaded.path, self.loaded.sha256) or {}
        return {
            "sha256": self.loaded.sha256,
            "classes": list(self.classes),
            "path": str(self.loaded.path),
            "epoch": self.loaded.meta.get("epoch"),
            "val_acc": metrics.get("val_acc"),
            "test_acc": test.get("test_acc"),
            "config": {
                "model": {k: v for k, v in cfg.to_dict()["model"].items()},
                "mean": list(cfg.data.mean),
                "std": list(cfg.data.std),
            },
            "backend": self.backend.name,
            "load_s": round(self.load_s, 3),
            "replica": {
                "pid": os.getpid(),
                "requests": self.requests,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_size": self.args.max_batch_size,
                "batch_wait_timeout_s": self.args.batch_wait_timeout_s,
            },
        }


def make_api(svc: Service) -> FastAPI:
    """The FastAPI app of one replica (built in the replica: FastAPI apps do not pickle)."""
    app = FastAPI(
        title="modresnet",
        version="1",
        description="CIFAR-10 ModifiedResNet classifier: /predict for image files, the "
        "Open Inference Protocol v2 under /v2, a web page at /.",
        openapi_url=None,  # served below, behind the API key when there is one
        docs_url=None,  # Swagger UI and ReDoc load third-party scripts: none on this origin
        redoc_url=None,
    )
    add_security_headers(app)

    async def openapi(request: Request) -> JSONResponse:
        svc._auth(request)
        schema = app.openapi()
        root_path = request.scope.get("root_path", "").rstrip("/")
        if root_path:  # the route prefix, as FastAPI's own /openapi.json puts it
            schema = {**schema, "servers": [{"url": root_path}]}
        return JSONResponse(schema)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error_response(err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return error_response(400, api.validation_message(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail))

    app.add_api_route(
        "/", svc.page, methods=["GET"], response_class=HTMLResponse, include_in_schema=False
    )
    app.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/predict",
        svc.predict,
        methods=["POST"],
        response_model=schemas.PredictResponse,
        responses=ERRORS,
        openapi_extra=schemas.PREDICT_OPENAPI,
    )
    app.add_api_route("/v2/health/live", svc.live, methods=["GET"])
    app.add_api_route("/v2/health/ready", svc.ready, methods=["GET"])
    app.add_api_route(
        "/v2/models/" + schemas.MODEL_NAME, svc.model_metadata, methods=["GET"], responses=ERRORS
    )
    app.add_api_route(
        "/v2/models/" + schemas.MODEL_NAME + "/ready", svc.model_ready, methods=["GET"]
    )
    app.add_api_route(
        "/v2/models/" + schemas.MODEL_NAME + "/infer",
        svc.infer,
        methods=["POST"],
        response_model=schemas.InferResponse,
        responses=ERRORS,
        openapi_extra=schemas.INFER_OPENAPI,
    )
    app.add_api_route("/model", svc.model_info, methods=["GET"], responses=ERRORS)
    return app
