"""The Open Inference Protocol v2 (KServe, Triton) for the one model `modresnet`: GET its
metadata and readiness, POST infer with JSON or binary tensors (v2_binary.py). The server's
own health routes are health.py's.

A request costs a bounded amount of the replica, set by `max_images`: its JSON may be at most
`v2_json_limits` bytes and values, its binary part 4 bytes a value; larger bodies are refused
(413) from their headers or while streaming, before anything is parsed.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from serve.args import ServeArgs
from serve.http import body as bodies
from serve.http.errors import ERRORS, ApiError, invalid
from serve.metrics import Metrics
from serve.protocols import v2_binary
from serve.protocols.v2_schemas import (
    INFER_OPENAPI,
    MODEL_NAME,
    InferOutput,
    InferRequest,
    InferResponse,
)

if TYPE_CHECKING:
    from serve.service import Service

IMAGE_VALUES = 32 * 32 * 3
# A v2 JSON body may need, per value, a float32 written as Python writes a float (at most
# 22 characters: 0.00012345678901234568), its ", " and its share of the brackets; and, for
# the rest (id, parameters, outputs, the tensor's name, shape, datatype), 64 KiB and 1,024
# values. A body larger than that for `max_images` images is refused unread (413).
V2_VALUE_BYTES = 32
V2_ENVELOPE_BYTES = 64 * 1024
V2_ENVELOPE_VALUES = 1024


def v2_json_limits(max_images: int) -> tuple[int, int]:
    """(bytes, values) the JSON of a v2 request of `max_images` images may need at most."""
    values = max_images * IMAGE_VALUES
    return V2_ENVELOPE_BYTES + values * V2_VALUE_BYTES, V2_ENVELOPE_VALUES + values


async def read_infer(
    request: Request, args: ServeArgs, metrics: Metrics
) -> tuple[InferRequest, torch.Tensor]:
    """Read and parse a v2 request, its size bounded by what `args.max_images` images need:
    JSON at most `v2_json_limits`; with binary tensor data, that JSON plus 4 bytes a value.
    Its images and their parse time go to `metrics`."""
    json_limit = min(v2_json_limits(args.max_images)[0], args.max_body_bytes)
    why = f" (what a v2 request of {args.max_images} images needs"
    json_size = bodies.byte_count(request, v2_binary.HEADER)
    if json_size is None:
        limit, why = json_limit, why + ": send fewer images, or the tensor as binary data)"
    else:
        declared = bodies.byte_count(request, "content-length")
        if declared is not None and json_size > declared:
            raise ApiError(
                400,
                f"Inference-Header-Content-Length {json_size:,} does not fit a body of "
                f"{declared:,} bytes",
            )
        why += ": send fewer images)"
        if json_size > json_limit:
            raise ApiError(
                413, f"JSON part of {json_size:,} bytes is over the limit of {json_limit:,}{why}"
            )
        binary_limit = args.max_images * IMAGE_VALUES * v2_binary.DTYPES["FP32"].itemsize
        limit = min(json_size + binary_limit, args.max_body_bytes)
    body = await bodies.read_body(request, limit, args.body_timeout_s, why)
    start = time.perf_counter()
    req, x = await bodies.parse(
        len(body) if json_size is None else json_size, parse_infer, request, body, args.max_images
    )
    metrics.images("/v2/infer", len(x), time.perf_counter() - start)
    return req, x


def parse_infer(
    request: Request, body: bytes, max_images: int
) -> tuple[InferRequest, torch.Tensor]:
    """An Open Inference Protocol v2 request (JSON, or JSON + binary tensor data) -> uint8
    N x 3 x 32 x 32. One input, `input`: its datatype (UINT8 or FP32) and shape ([N,32,32,3]
    or [N,3,32,32]) say how to read it. read_infer runs it off the event loop for large
    bodies: it reads nothing of `request` but its (already parsed) headers."""
    media = bodies.media_type(request)
    json_size = bodies.byte_count(request, v2_binary.HEADER)
    binary = b""
    if json_size is not None:
        if media not in ("application/json", "application/octet-stream", ""):
            raise ApiError(
                415,
                f"unsupported Content-Type {media!r} for a binary v2 request: "
                f"use application/octet-stream",
            )
        body, binary = v2_binary.split_body(body, json_size)
    elif media not in ("application/json", ""):
        raise ApiError(
            415,
            f"unsupported Content-Type {media!r}: the v2 protocol takes "
            f"application/json (or the binary tensor extension, with an "
            f"Inference-Header-Content-Length header)",
        )
    try:
        req = InferRequest.model_validate(
            bodies.json_value(
                body,
                v2_json_limits(max_images)[1],
                f"what a v2 request of {max_images} images needs",
            )
        )
    except ValidationError as err:
        raise invalid(err) from None
    tensor = req.inputs[0]
    shape = tensor.shape
    if shape[0] > max_images:
        raise ApiError(413, f"{shape[0]} images in one request; the limit is {max_images}")
    expected = int(np.prod(shape))
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    if size is not None:
        if tensor.data is not None:
            raise ApiError(400, "input has both `data` and binary_data_size: send one")
        if size != len(binary):
            raise ApiError(400, f"binary_data_size {size} but {len(binary)} bytes follow the JSON")
        pixels = _pixels(
            v2_binary.tensor_from_bytes(binary, tensor.datatype, expected), tensor.datatype
        )
    elif binary:
        raise ApiError(
            400,
            f"{len(binary)} bytes follow the JSON but no input has parameters.binary_data_size",
        )
    elif tensor.data is None:
        raise ApiError(400, "input has no `data` (nor parameters.binary_data_size)")
    else:
        pixels = typed_data(tensor.data, tensor.datatype, expected)
    x = torch.from_numpy(pixels.reshape(shape))
    if shape[1:] == [32, 32, 3]:
        x = x.permute(0, 3, 1, 2)
    return req, x.contiguous()


def _pixels(arr: np.ndarray, datatype: str) -> np.ndarray:
    """A binary input's values (uint8 or float32) -> uint8 pixels; FP32 must be finite 0..1."""
    if datatype == "UINT8":
        return arr.astype(np.uint8)
    if not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
        raise ApiError(400, "FP32 input data must be finite pixel intensities in 0..1")
    return np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)


_JSON_TYPE = {bool: "boolean", str: "string", dict: "object", list: "array", type(None): "null"}


def typed_data(data: list, datatype: str, expected: int) -> np.ndarray:
    """v2 JSON `data` (flat, or nested evenly) -> uint8 pixels, refusing anything that is not
    a number of the datatype: UINT8 takes JSON integers 0..255 only, FP32 finite numbers 0..1."""
    flat, depth = data, 0
    while flat and type(flat[0]) is list:
        if not all(type(v) is list for v in flat):
            raise ApiError(
                400, "input data: nested unevenly (mixes arrays and numbers at one level)"
            )
        flat, depth = list(itertools.chain.from_iterable(flat)), depth + 1
        if len(flat) > expected or depth > 4:
            break
    if len(flat) != expected:
        raise ApiError(400, f"input data has {len(flat)} values; the shape needs {expected}")
    allowed = {int} if datatype == "UINT8" else {int, float}
    types = set(map(type, flat))
    if not types <= allowed:
        bad = sorted(
            _JSON_TYPE.get(t, t.__name__) if t is not float else "non-integer number"
            for t in types - allowed
        )
        want = "JSON integers 0..255" if datatype == "UINT8" else "JSON numbers 0..1"
        raise ApiError(400, f"{datatype} input data must be {want}; got {', '.join(bad)}")
    lo, hi = min(flat), max(flat)
    if datatype == "UINT8":
        if lo < 0 or hi > 255:
            raise ApiError(400, f"UINT8 input data must be integers in 0..255; got {lo}..{hi}")
        return np.array(flat, dtype=np.uint8)
    if not (0 <= lo and hi <= 1):  # also refuses inf (1e400) and NaN
        raise ApiError(
            400, f"FP32 input data must be pixel intensities in 0..1; got {lo:.3g}..{hi:.3g}"
        )
    return np.round(np.array(flat, dtype=np.float64) * 255.0).astype(np.uint8)


def register(app: FastAPI, svc: Service) -> None:
    def model_metadata(request: Request) -> dict:
        svc.keys.check(request)
        version = svc.choose(request, draw=False)
        return {
            "name": MODEL_NAME,
            "versions": list(svc.versions),
            "platform": "onnxruntime_onnx"
            if version.backend.name in ("onnx", "int8")
            else "pytorch_torch",
            # One input. Also accepted under the same name: datatype FP32 (0..1) and/or
            # shape [-1, 3, 32, 32] (NCHW); the request's datatype and shape choose.
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(svc.classes)]}
            ],
        }

    def model_ready() -> dict:
        return {"name": MODEL_NAME, "ready": True}

    async def infer(request: Request) -> InferResponse | Response:
        """Open Inference Protocol v2: input `input` UINT8/FP32 [N,32,32,3] or [N,3,32,32]."""
        svc.keys.check(request)
        req, x = await read_infer(request, svc.args, svc.metrics)
        version = svc.choose(request)
        probs = await svc.probabilities(list(x), version)
        response = InferResponse(
            model_name=MODEL_NAME,
            model_version=version.label,
            id=req.id,
            outputs=[
                InferOutput(
                    name="probabilities",
                    shape=list(probs.shape),
                    datatype="FP32",
                    data=probs.reshape(-1).tolist(),
                )
            ],
        )
        if not v2_binary.wants_binary_output(req.parameters, req.outputs):
            return response
        body, json_size = v2_binary.encode_response(
            response.model_dump(exclude_none=True), {"probabilities": probs}
        )
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_size)},
        )

    model = "/v2/models/" + MODEL_NAME
    app.add_api_route(model, model_metadata, methods=["GET"], responses=ERRORS)
    app.add_api_route(model + "/ready", model_ready, methods=["GET"])
    app.add_api_route(
        model + "/infer",
        infer,
        methods=["POST"],
        response_model=InferResponse,
        responses=ERRORS,
        openapi_extra=INFER_OPENAPI,
    )
