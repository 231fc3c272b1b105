"""HTTP schemas and request parsing for the Serve app, independent of Ray.

Everything a client can get wrong raises `ApiError(status, message)`, which the app turns
into a JSON 4xx body `{"error": ..., "status": ...}`; nothing here can produce a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from modresnet.images import ImageError, decode_image

MODEL_NAME = "modresnet"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ErrorBody(BaseModel):
    error: str
    status: int


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    index: int
    filename: str | None = None
    top_k: list[LabelProbability]


class PredictResponse(BaseModel):
    model_sha256: str
    backend: str
    predictions: list[ImagePrediction]


class PredictJson(BaseModel):
    images: list[str] = Field(description="Base64 image bytes (PNG, JPEG, GIF...); a "
                              "`data:image/...;base64,` prefix is allowed.")
    top_k: int | None = Field(default=None, ge=1, le=10)


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[dict[str, Any]] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]


PREDICT_OPENAPI = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": PredictJson.model_json_schema()},
}}}
INFER_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferRequest.model_json_schema()}}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, f"request body of {int(declared):,} bytes is over the limit "
                                    f"of {limit:,} bytes")
        except ValueError:
            raise ApiError(400, "Content-Length header is not an integer") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "empty request body: send images as multipart field `files` or "
                            "JSON {\"images\": [base64, ...]}")
    return body


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"body is not valid JSON ({err})") from None


def _validation_message(err: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()]
    return "invalid request: " + "; ".join(parts[:5])


def _decode(data: bytes, name: str, max_pixels: int) -> torch.Tensor:
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as err:
        raise ApiError(400, f"{name}: {err}") from None


async def parse_predict(request: Request, body: bytes, max_images: int, max_pixels: int
                        ) -> tuple[list[torch.Tensor], list[str | None], int | None]:
    """Images (uint8 3x32x32), their filenames, and a top_k the client asked for, if any."""
    media = _media_type(request)
    if media == "multipart/form-data":
        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=max_images,
                                         max_fields=16, max_part_size=len(body) + 1).parse()
        except MultiPartException as err:
            raise ApiError(400, f"malformed multipart body ({err.message})") from None
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not files:
            raise ApiError(400, "multipart body has no file in field `files`")
        images, names = [], []
        for i, f in enumerate(files):
            data = await f.read()
            name = f.filename or f"files[{i}]"
            images.append(_decode(data, name, max_pixels))
            names.append(f.filename)
        top_k = form.get("top_k")
        try:
            return images, names, int(top_k) if isinstance(top_k, str) else None
        except ValueError:
            raise ApiError(400, f"top_k: not an integer ({top_k!r})") from None
    if media == "application/json":
        try:
            req = PredictJson.model_validate(_json(body))
        except ValidationError as err:
            raise ApiError(400, _validation_message(err)) from None
        if not req.images:
            raise ApiError(400, "images: the list is empty")
        if len(req.images) > max_images:
            raise ApiError(413, f"{len(req.images)} images in one request; the limit is {max_images}")
        images = []
        for i, text in enumerate(req.images):
            if text.startswith("data:") and "," in text:
                text = text.split(",", 1)[1]
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, f"images[{i}]: not valid base64") from None
            images.append(_decode(data, f"images[{i}]", max_pixels))
        return images, [None] * len(images), req.top_k
    raise ApiError(415, f"unsupported Content-Type {media or '(none)'!r}: use multipart/form-data "
                        f"(field `files`) or application/json ({{\"images\": [base64, ...]}})")


def parse_infer(request: Request, body: bytes, max_images: int) -> tuple[InferRequest, torch.Tensor]:
    """An Open Inference Protocol v2 request -> uint8 N x 3 x 32 x 32."""
    media = _media_type(request)
    if media not in ("application/json", ""):
        raise ApiError(415, f"unsupported Content-Type {media!r}: the v2 protocol takes "
                            f"application/json")
    try:
        req = InferRequest.model_validate(_json(body))
    except ValidationError as err:
        raise ApiError(400, _validation_message(err)) from None
    if len(req.inputs) != 1 or req.inputs[0].name != "input":
        raise ApiError(400, f"expected exactly one input named 'input'; got "
                            f"{[t.name for t in req.inputs]}")
    for out in req.outputs or []:
        if out.get("name") != "probabilities":
            raise ApiError(400, f"unknown output {out.get('name')!r}; this model has "
                                f"'probabilities'")
    tensor = req.inputs[0]
    shape = tensor.shape
    if len(shape) != 4 or shape[0] < 1 or not (shape[1:] == [32, 32, 3] or shape[1:] == [3, 32, 32]):
        raise ApiError(400, f"input shape {shape}: expected [N,32,32,3] (NHWC) or [N,3,32,32] "
                            f"(NCHW) with N >= 1")
    if shape[0] > max_images:
        raise ApiError(413, f"{shape[0]} images in one request; the limit is {max_images}")
    if tensor.datatype not in ("UINT8", "FP32"):
        raise ApiError(400, f"input datatype {tensor.datatype!r}: expected UINT8 (0..255) or "
                            f"FP32 (0..1)")
    try:
        arr = np.asarray(tensor.data, dtype=np.float64)
    except (ValueError, TypeError):
        raise ApiError(400, "input data: not a flat (or evenly nested) list of numbers") from None
    expected = int(np.prod(shape))
    if arr.size != expected:
        raise ApiError(400, f"input data has {arr.size} values; shape {shape} needs {expected}")
    if not np.isfinite(arr).all():
        raise ApiError(400, "input data holds NaN or infinite values")
    if tensor.datatype == "UINT8":
        if (arr < 0).any() or (arr > 255).any() or (arr != np.round(arr)).any():
            raise ApiError(400, "UINT8 input data must be integers in 0..255")
        pixels = arr
    else:
        if (arr < 0).any() or (arr > 1).any():
            raise ApiError(400, "FP32 input data must be pixel intensities in 0..1")
        pixels = np.round(arr * 255.0)
    x = torch.from_numpy(pixels.reshape(shape).astype(np.uint8))
    if shape[1:] == [32, 32, 3]:
        x = x.permute(0, 3, 1, 2)
    return req, x.contiguous()


def top_k_rows(probs: np.ndarray, classes: tuple[str, ...], k: int) -> list[list[LabelProbability]]:
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[LabelProbability(label=classes[j], probability=float(row[j])) for j in idx]
            for row, idx in zip(probs, order)]


def error_response(status: int, message: str):
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def protocol(kind: Literal["ready", "live"], ok: bool) -> dict[str, bool]:
    return {kind: ok}
