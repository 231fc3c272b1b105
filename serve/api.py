"""Request parsing for the Serve app (its schemas: serve/schemas.py), independent of Ray.

Everything a client can get wrong raises `ApiError(status, message)`, which the app turns
into a JSON 4xx body `{"error": ..., "status": ...}`; nothing here can produce a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from fastapi import Request
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from modresnet.inference import top_k
from serve import jsonlimits, v2binary
from serve.decode import DecodeError, DecodePool
from serve.schemas import InferRequest, LabelProbability, PredictJson


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int, timeout_s: float = 10.0) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without buffering them, and
    (408) a body that has not fully arrived `timeout_s` after the request started."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(
                    413,
                    f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes",
                )
        except ValueError:
            raise ApiError(400, "Content-Length header is not an integer") from None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body is over the limit of {limit:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            f"request body not received within {timeout_s:g} s ({size:,} bytes "
            f"arrived); send it in one go, or over a faster link",
        ) from None
    body = b"".join(chunks)
    if not body:
        raise ApiError(
            400,
            "empty request body: send images as multipart field `files` or "
            'JSON {"images": [base64, ...]}',
        )
    return body


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json(body: bytes) -> Any:
    try:
        return jsonlimits.loads(body)
    except jsonlimits.JsonLimitError as err:
        raise ApiError(400, f"JSON body refused: {err}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"body is not valid JSON ({err})") from None


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic/FastAPI errors -> one line, never echoing the input (which may be huge)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg'][:200]}" for e in errors]
    return "invalid request: " + "; ".join(parts[:5])


def _validation_message(err: ValidationError) -> str:
    return validation_message(err.errors())


async def _decode_all(decoder: DecodePool, items: list[tuple[str, bytes]]) -> list[torch.Tensor]:
    try:
        return await decoder.decode_all(items)
    except DecodeError as err:
        raise ApiError(err.status, err.message) from None


async def parse_predict(
    request: Request, body: bytes, max_images: int, decoder: DecodePool
) -> tuple[list[torch.Tensor], list[str | None], int | None]:
    """Images (uint8 3x32x32), their filenames, and a top_k the client asked for, if any."""
    media = _media_type(request)
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
        return await _decode_all(decoder, items), names, k
    if media == "application/json":
        try:
            req = PredictJson.model_validate(_json(body))
        except ValidationError as err:
            raise ApiError(400, _validation_message(err)) from None
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
        return await _decode_all(decoder, items), [None] * len(items), req.top_k
    raise ApiError(
        415,
        f"unsupported Content-Type {media or '(none)'!r}: use multipart/form-data "
        f'(field `files`) or application/json ({{"images": [base64, ...]}})',
    )


def parse_infer(
    request: Request, body: bytes, max_images: int
) -> tuple[InferRequest, torch.Tensor]:
    """An Open Inference Protocol v2 request (JSON, or JSON + binary tensor data) -> uint8
    N x 3 x 32 x 32. One input, `input`: its datatype (UINT8 or FP32) and shape ([N,32,32,3]
    or [N,3,32,32]) say how to read it."""
    media = _media_type(request)
    header = request.headers.get(v2binary.HEADER)
    binary = b""
    if header is not None:
        if media not in ("application/json", "application/octet-stream", ""):
            raise ApiError(
                415,
                f"unsupported Content-Type {media!r} for a binary v2 request: "
                f"use application/octet-stream",
            )
        try:
            body, binary = v2binary.split_body(body, header)
        except v2binary.BinaryError as err:
            raise ApiError(400, str(err)) from None
    elif media not in ("application/json", ""):
        raise ApiError(
            415,
            f"unsupported Content-Type {media!r}: the v2 protocol takes "
            f"application/json (or the binary tensor extension, with an "
            f"Inference-Header-Content-Length header)",
        )
    try:
        req = InferRequest.model_validate(_json(body))
    except ValidationError as err:
        raise ApiError(400, _validation_message(err)) from None
    if len(req.inputs) != 1 or req.inputs[0].name != "input":
        raise ApiError(
            400, f"expected exactly one input named 'input'; got {[t.name for t in req.inputs]}"
        )
    for out in req.outputs or []:
        if out.get("name") != "probabilities":
            raise ApiError(
                400, f"unknown output {out.get('name')!r}; this model has 'probabilities'"
            )
    tensor = req.inputs[0]
    shape = tensor.shape
    if (
        len(shape) != 4
        or shape[0] < 1
        or not (shape[1:] == [32, 32, 3] or shape[1:] == [3, 32, 32])
    ):
        raise ApiError(
            400,
            f"input shape {shape}: expected [N,32,32,3] (NHWC) or [N,3,32,32] (NCHW) with N >= 1",
        )
    if shape[0] > max_images:
        raise ApiError(413, f"{shape[0]} images in one request; the limit is {max_images}")
    if tensor.datatype not in ("UINT8", "FP32"):
        raise ApiError(
            400, f"input datatype {tensor.datatype!r}: expected UINT8 (0..255) or FP32 (0..1)"
        )
    expected = int(np.prod(shape))
    try:
        size = v2binary.binary_size(tensor.parameters)
        if size is not None:
            if tensor.data is not None:
                raise v2binary.BinaryError("input has both `data` and binary_data_size: send one")
            if size != len(binary):
                raise v2binary.BinaryError(
                    f"binary_data_size {size} but {len(binary)} bytes follow the JSON"
                )
            pixels = _pixels(
                v2binary.tensor_from_bytes(binary, tensor.datatype, expected), tensor.datatype
            )
        elif binary:
            raise v2binary.BinaryError(
                f"{len(binary)} bytes follow the JSON but no input has parameters.binary_data_size"
            )
        elif tensor.data is None:
            raise ApiError(400, "input has no `data` (nor parameters.binary_data_size)")
        else:
            pixels = typed_data(tensor.data, tensor.datatype, expected)
    except v2binary.BinaryError as err:
        raise ApiError(400, str(err)) from None
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


def error_response(status: int, message: str):
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
