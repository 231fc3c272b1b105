"""The Ray Serve deployment: FastAPI ingress, dynamic batching, autoscaling, backpressure.

`build_app(ServeArgs)` is a typed application builder, so `serve run serve.app:build_app
checkpoint=...` and `serve deploy serve/config.yaml` work as well as `modresnet serve`.
Secrets never travel in args: the API key is read inside each replica from the environment
variable *named* by `api_key_env` (default MODRESNET_API_KEY). With `api_key_required` a
replica that cannot see the key refuses to start, so the deployment fails instead of serving
without auth.

Hostile traffic: bodies must arrive within `body_timeout_s` (408), JSON is parsed with depth
and number limits (serve/jsonlimits.py), images decode on a thread pool with pixel and time
bounds (serve/decode.py), excess requests get Serve's 429 + Retry-After once
`max_queued_requests` wait, and the health probes are a separate tiny app at /v2/health
(`build_health`) so they answer even when every request slot of the model is taken.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import api as schemas
from serve import v2binary
from serve.api import ApiError, error_response

APP_NAME = "modresnet"
PAGE = (Path(__file__).parent / "page.html").read_text()


class ServeArgs(BaseModel):
    """Everything about a deployment except secrets; visible through `serve config`.

    Unknown keys are an error: a misspelt arg in serve/config.yaml or a RayService's
    serveConfigV2 would otherwise be dropped silently and its default served instead."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="Run directory or checkpoint folder (readable by replicas).")
    backend: Literal["onnx", "torch", "int8"] = "onnx"
    threads: int = Field(1, ge=1, le=64, description="Intra-op threads per replica.")
    replica_cpus: float = Field(1.0, gt=0, description="Logical CPUs each replica reserves.")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8, gt=0)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(60, ge=0)
    look_back_period_s: float = Field(30, gt=0)
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(32, ge=-1, description="-1: unbounded; else 429 when full.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with a 429.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(10, gt=0, le=600,
                                  description="Whole body must arrive within this; else 408.")
    max_images: int = Field(64, ge=1)
    max_pixels: int = Field(16_000_000, ge=1024, description="Per image (declared size).")
    request_pixels: int = Field(32_000_000, ge=1024,
                                description="Declared pixels summed over one request's images.")
    decode_workers: int = Field(2, ge=1, le=64, description="Image-decoding threads per replica.")
    decode_timeout_s: float = Field(3, gt=0, le=600, description="Per image; else 413.")
    top_k: int = Field(5, ge=1, le=10)
    api_key_env: str = Field("MODRESNET_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Name of the env var holding the API key (not the key).")
    api_key_required: bool = Field(False, description="Fail the deployment if a replica cannot "
                                   "see the key (instead of serving without auth).")
    health_check_period_s: float = Field(5, gt=0)
    health_check_timeout_s: float = Field(30, gt=0)
    graceful_shutdown_timeout_s: float = Field(20, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            known = list(cls.model_fields)
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                def hint(key: str) -> str:
                    close = difflib.get_close_matches(key, known, n=1)
                    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")

                raise ValueError(f"unknown serve arg{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(map(hint, unknown))}; the args are: {', '.join(known)}")
        return data

    @field_validator("max_replicas")
    @classmethod
    def _replicas(cls, v, info):
        lo = info.data.get("min_replicas", 1)
        if v < lo:
            raise ValueError(f"max_replicas ({v}) is below min_replicas ({lo})")
        return v


ERRORS = {code: {"model": schemas.ErrorBody} for code in (400, 401, 408, 413, 415, 429, 503)}


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
            f"inherit the raylet's environment), then deploy again.")
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
        self.decoder = DecodePool(self.args.decode_workers, self.args.decode_timeout_s,
                                  self.args.max_pixels, self.args.request_pixels)
        self._infer.set_max_batch_size(self.args.max_batch_size)
        self._infer.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        from ray.serve.context import _get_internal_replica_context

        self._in_replica = _get_internal_replica_context() is not None
        self.batch_sizes: Counter[int] = Counter()
        self.failures = 0
        self.requests = 0

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    # --- health, batching -----------------------------------------------------------------
    def check_health(self) -> None:
        if self.failures >= 3:
            raise RuntimeError(f"{self.failures} inference failures in a row")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
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
        if not self._in_replica:  # in-process (tests): serve.batch needs a replica context
            return (await asyncio.to_thread(self.backend.probabilities, torch.stack(images))
                    ).astype(np.float32)
        rows = await asyncio.gather(*(self._infer(img) for img in images))
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
        body = await schemas.read_body(request, self.args.max_body_bytes, self.args.body_timeout_s)
        images, names, body_k = await schemas.parse_predict(
            request, body, self.args.max_images, self.decoder)
        if len(images) > self.args.max_images:
            raise ApiError(413, f"{len(images)} images in one request; the limit is "
                                f"{self.args.max_images}")
        k = top_k or body_k or self.args.top_k
        if not 1 <= k <= len(self.classes):
            raise ApiError(400, f"top_k: must be between 1 and {len(self.classes)}; got {k}")
        probs = await self._probabilities(images)
        self.requests += 1
        rows = schemas.top_k_rows(probs, self.classes, k)
        return schemas.PredictResponse(
            model_sha256=self.loaded.sha256, backend=self.backend.name,
            predictions=[schemas.ImagePrediction(index=i, filename=n, top_k=r)
                         for i, (n, r) in enumerate(zip(names, rows))])

    def live(self) -> dict:
        return {"live": True}

    def ready(self) -> dict:
        return {"ready": True}

    def model_metadata(self, request: Request) -> dict:
        self._auth(request)
        return {"name": schemas.MODEL_NAME, "versions": [self.loaded.sha256[:12]],
                "platform": "onnxruntime_onnx" if self.backend.name in ("onnx", "int8") else "pytorch_torch",
                # One input. Also accepted under the same name: datatype FP32 (0..1) and/or
                # shape [-1, 3, 32, 32] (NCHW); the request's datatype and shape choose.
                "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32",
                             "shape": [-1, len(self.classes)]}]}

    def model_ready(self) -> dict:
        return {"name": schemas.MODEL_NAME, "ready": True}

    async def infer(self, request: Request) -> schemas.InferResponse:
        """Open Inference Protocol v2: input `input` UINT8/FP32 [N,32,32,3] or [N,3,32,32]."""
        self._auth(request)
        body = await schemas.read_body(request, self.args.max_body_bytes, self.args.body_timeout_s)
        req, x = schemas.parse_infer(request, body, self.args.max_images)
        probs = await self._probabilities(list(x))
        self.requests += 1
        response = schemas.InferResponse(
            model_name=schemas.MODEL_NAME, model_version=self.loaded.sha256[:12], id=req.id,
            outputs=[schemas.InferOutput(name="probabilities", shape=list(probs.shape),
                                         datatype="FP32", data=probs.reshape(-1).tolist())])
        if not v2binary.wants_binary_output(req.parameters, req.outputs):
            return response
        body, json_size = v2binary.encode_response(response.model_dump(exclude_none=True),
                                                   {"probabilities": probs})
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_size)})

    def model_info(self, request: Request) -> dict:
        """The checkpoint this replica serves, and its batching statistics."""
        self._auth(request)
        cfg = self.loaded.config
        metrics = self.loaded.meta.get("metrics", {})
        return {
            "sha256": self.loaded.sha256, "classes": list(self.classes),
            "path": str(self.loaded.path), "epoch": self.loaded.meta.get("epoch"),
            "val_acc": metrics.get("val_acc"), "test_acc": metrics.get("test_acc"),
            "config": {"model": {k: v for k, v in cfg.to_dict()["model"].items()},
                       "mean": list(cfg.data.mean), "std": list(cfg.data.std)},
            "backend": self.backend.name, "load_s": round(self.load_s, 3),
            "replica": {"pid": os.getpid(), "requests": self.requests,
                        "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                        "max_batch_size": self.args.max_batch_size,
                        "batch_wait_timeout_s": self.args.batch_wait_timeout_s},
        }



@serve.ingress()
class Classifier(Service):
    """The Serve deployment class: `Service` with Serve's ASGI wrapper."""


def make_api(svc: Service) -> FastAPI:
    """The FastAPI app of one replica (built in the replica: FastAPI apps do not pickle)."""
    app = FastAPI(title="modresnet", version="1",
                  description="CIFAR-10 ModifiedResNet classifier: /predict for image files, the "
                              "Open Inference Protocol v2 under /v2, a web page at /.")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error_response(err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return error_response(400, schemas.validation_message(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail))

    app.add_api_route("/", svc.page, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    app.add_api_route("/predict", svc.predict, methods=["POST"], response_model=schemas.PredictResponse, responses=ERRORS,
                      openapi_extra=schemas.PREDICT_OPENAPI)
    app.add_api_route("/v2/health/live", svc.live, methods=["GET"])
    app.add_api_route("/v2/health/ready", svc.ready, methods=["GET"])
    app.add_api_route("/v2/models/" + schemas.MODEL_NAME, svc.model_metadata, methods=["GET"], responses=ERRORS)
    app.add_api_route("/v2/models/" + schemas.MODEL_NAME + "/ready", svc.model_ready, methods=["GET"])
    app.add_api_route("/v2/models/" + schemas.MODEL_NAME + "/infer", svc.infer, methods=["POST"], response_model=schemas.InferResponse,
                      responses=ERRORS, openapi_extra=schemas.INFER_OPENAPI)
    app.add_api_route("/model", svc.model_info, methods=["GET"], responses=ERRORS)
    return app


def build_app(args: ServeArgs):
    """Typed builder: `serve run serve.app:build_app checkpoint=runs/demo backend=onnx`."""
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    from modresnet.checkpoint import resolve

    args = args.model_copy(update={"checkpoint": str(resolve(args.checkpoint).resolve())})
    deployment = serve.deployment(Classifier).options(
        name="Classifier",
        autoscaling_config={
            "min_replicas": args.min_replicas, "initial_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
            "upscale_delay_s": args.upscale_delay_s, "downscale_delay_s": args.downscale_delay_s,
            "look_back_period_s": args.look_back_period_s},
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        backpressure_config={"status_code": 429, "retry_after_s": args.retry_after_s},
        max_constructor_retry_count=3,  # a replica that cannot start (no key) fails the deploy fast
        ray_actor_options={"num_cpus": args.replica_cpus},
        health_check_period_s=args.health_check_period_s,
        health_check_timeout_s=args.health_check_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=args.graceful_shutdown_timeout_s,
        max_surge_percent=100,
    )
    return deployment.bind(args.model_dump())


class HealthArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = Field(APP_NAME, description="The Serve application whose readiness to report.")
    cache_s: float = Field(1.0, gt=0, le=60, description="How stale a readiness answer may be.")


@serve.ingress()
class Health:
    """/v2/health/live and /ready as their own app, so a probe never waits for a request slot of
    the model deployment (slow clients or a burst can take all of those). Ready means the
    controller counts at least one RUNNING replica of `app`'s Classifier; the answer is
    refreshed in the background at most every `cache_s`, so a probe never waits on it."""

    def __init__(self, args: dict) -> None:
        self.args = HealthArgs.model_validate(args)
        self._ready = False
        self._checked = 0.0
        self._refresh: asyncio.Task | None = None

    def _status(self) -> bool:
        app = serve.status().applications.get(self.args.app)
        if app is None or "Classifier" not in app.deployments:
            return False
        return app.deployments["Classifier"].replica_states.get("RUNNING", 0) > 0

    async def _update(self) -> None:
        try:
            self._ready = await asyncio.to_thread(self._status)
        except Exception:  # the controller is briefly unreachable: not ready
            self._ready = False
        self._checked = time.monotonic()

    async def ready_now(self) -> bool:
        if self._checked == 0.0:
            await self._update()
        elif time.monotonic() - self._checked > self.args.cache_s and (
                self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._update())
        return self._ready

    def __serve_build_asgi_app__(self) -> FastAPI:
        from fastapi.responses import JSONResponse

        app = FastAPI(title="modresnet health", openapi_url=None, docs_url=None, redoc_url=None)

        @app.get("/live")
        def live() -> dict:
            return {"live": True}

        @app.get("/ready")
        async def ready():
            ok = await self.ready_now()
            return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

        return app


def build_health(args: HealthArgs | dict):
    """`serve run serve.app:build_health app=modresnet` at route prefix /v2/health."""
    if isinstance(args, dict):
        args = HealthArgs.model_validate(args)
    return serve.deployment(Health).options(
        name="Health", num_replicas=1, max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": 0}).bind(args.model_dump())


def start(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start Serve's HTTP proxy on host:port (a no-op for the port if Serve is already up)."""
    serve.start(http_options={"host": host, "port": port})


def deploy(args: ServeArgs, name: str = APP_NAME, route_prefix: str = "/"):
    """Deploy, or roll an existing app of that name over to new args in place; with it, its
    health app `{name}-health` at `{route_prefix}/v2/health` (longest prefix wins in Serve)."""
    handle = serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    serve.run(build_health(HealthArgs(app=name)), name=f"{name}-health",
              route_prefix=route_prefix.rstrip("/") + "/v2/health", blocking=False)
    return handle


def wait_ready(url: str, timeout: float = 120, headers: dict | None = None,
               sha256: str | None = None) -> dict:
    """Poll GET {url}/model until it answers (and serves `sha256`, when given)."""
    import httpx

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
