"""POST /predict: image files in (multipart field `files`, or JSON base64 `images`), the top-k
classes of each out, ranked as `modresnet predict` ranks them."""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from modresnet.inference import top_k
from serve.decode import DecodePool
from serve.http import body as bodies
from serve.http.errors import ERRORS, ApiError, invalid
from serve.http.openapi import inline_schema

if TYPE_CHECKING:
    from serve.service import Service

PREDICT_ENVELOPE_VALUES = 16


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    index: int
    filename: str | None = None
    top_k: list[LabelProbability]


class PredictResponse(BaseModel):
    model_sha256: str
    model_version: str = Field(description="The label of the version that answered")
    backend: str
    predictions: list[ImagePrediction]


class PredictJson(BaseModel):
    images: list[str] = Field(
        description="Base64 image bytes (PNG, JPEG, GIF...); a "
        "`data:image/...;base64,` prefix is allowed."
    )
    top_k: int | None = Field(default=None, ge=1, le=10)


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {"schema": inline_schema(PredictJson)},
        },
    }
}


async def parse_predict(
    request: Request, body: bytes, max_images: int, decoder: DecodePool
) -> tuple[list[torch.Tensor], list[str | None], int | None]:
    """Images (uint8 3x32x32), their filenames, and a top_k the client asked for, if any."""
    media = bodies.media_type(request)
    if media == "multipart/form-data":

        async def stream():
            yield body

        try:
            form = await MultiPartParser(
                request.headers,
                stream(),
                max_files=max_images,
                max_fields=16,
                max_part_size=len(body) + 1,
            ).parse()
        except MultiPartException as err:
            raise ApiError(400, f"malformed multipart body ({err.message})") from None
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not files:
            raise ApiError(400, "multipart body has no file in field `files`")
        top_k = form.get("top_k")
        try:
            k = int(top_k) if isinstance(top_k, str) else None
        except ValueError:
            raise ApiError(400, f"top_k: not an integer ({str(top_k)[:40]!r})") from None
        items, names = [], []
        for i, f in enumerate(files):
            items.append((f.filename or f"files[{i}]", await f.read()))
            names.append(f.filename)
        return await decoder.decode_all(items), names, k
    if media == "application/json":
        req = await bodies.parse(len(body), _predict_json, body, max_images)
        if not req.images:
            raise ApiError(400, "images: the list is empty")
        if len(req.images) > max_images:
            raise ApiError(
                413, f"{len(req.images)} images in one request; the limit is {max_images}"
            )
        items = []
        for i, text in enumerate(req.images):
            if text.startswith("data:") and "," in text:
                text = text.split(",", 1)[1]
            try:
                items.append((f"images[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise ApiError(400, f"images[{i}]: not valid base64") from None
        return await decoder.decode_all(items), [None] * len(items), req.top_k
    raise ApiError(
        415,
        f"unsupported Content-Type {media or '(none)'!r}: use multipart/form-data "
        f'(field `files`) or application/json ({{"images": [base64, ...]}})',
    )


def _predict_json(body: bytes, max_images: int) -> PredictJson:
    try:
        return PredictJson.model_validate(
            bodies.json_value(
                body, max_images + PREDICT_ENVELOPE_VALUES, f"at most {max_images} images"
            )
        )
    except ValidationError as err:
        raise invalid(err) from None


def top_k_rows(probs: np.ndarray, classes: tuple[str, ...], k: int) -> list[list[LabelProbability]]:
    """The same ranking as `modresnet predict` (ties by class index)."""
    values, order = top_k(torch.tensor(probs), k)
    return [
        [
            LabelProbability(label=classes[j], probability=p)
            for p, j in zip(row_p, row_j, strict=True)
        ]
        for row_p, row_j in zip(values.tolist(), order.tolist(), strict=True)
    ]


def register(app: FastAPI, svc: Service) -> None:
    async def predict(request: Request, top_k: int | None = None) -> PredictResponse:
        """Classify one or more images: multipart field `files`, or JSON base64 `images`."""
        svc.keys.check(request)
        args = svc.args
        body = await bodies.read_body(request, args.max_body_bytes, args.body_timeout_s)
        start = time.perf_counter()
        images, names, body_k = await parse_predict(request, body, args.max_images, svc.decoder)
        svc.metrics.images("/predict", len(images), time.perf_counter() - start)
        if len(images) > args.max_images:
            raise ApiError(
                413, f"{len(images)} images in one request; the limit is {args.max_images}"
            )
        k = top_k or body_k or args.top_k
        if not 1 <= k <= len(svc.classes):
            raise ApiError(400, f"top_k: must be between 1 and {len(svc.classes)}; got {k}")
        version = svc.choose(request)
        probs = await svc.probabilities(images, version)
        rows = top_k_rows(probs, svc.classes, k)
        return PredictResponse(
            model_sha256=version.loaded.sha256,
            model_version=version.label,
            backend=version.backend.name,
            predictions=[
                ImagePrediction(index=i, filename=n, top_k=r)
                for i, (n, r) in enumerate(zip(names, rows, strict=False))
            ],
        )

    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=PREDICT_OPENAPI,
    )
