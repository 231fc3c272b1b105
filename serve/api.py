"""Request parsing for the Serve app (its schemas: serve/schemas.py), independent of Ray.

Everything a client can get wrong raises `ApiError(status, message)`, which the app turns
into a JSON 4xx body `{"error": ..., "status": ...}`; nothing here can produce a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from fastapi import Request
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from modresnet.inference import top_k
from serve import jsonlimits, v2binary
from serve.args import ServeArgs
from serve.decode import DecodeError, DecodePool
from serve.schemas import InferRequest, LabelProbability, PredictJson

T = TypeVar("T")

IMAGE_VALUES = 32 * 32 * 3
# A v2 JSON body may need, per value, a float32 written as Python writes a float (at most
# 22 characters: 0.00012345678901234568), its ", " and its share of the brackets; and, for
# the rest (id, parameters, outputs, the tensor's name, shape, datatype), 64 KiB and 1,024
# values. A body larger than that for `max_images` images is refused unread (413).
V2_VALUE_BYTES = 32
V2_ENVELOPE_BYTES = 64 * 1024
V2_ENVELOPE_VALUES = 1024
PREDICT_ENVELOPE_VALUES = 16
# JSON up to this size parses on the event loop (under a millisecond); larger bodies parse on
# one thread per replica, so the loop keeps answering and at most one parse's objects exist.
INLINE_JSON_BYTES = 64 * 1024
_PARSER = ThreadPoolExecutor(1, thread_name_prefix="json")
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")  # not isdigit() ("²") nor int() ("٣", "+1", "1_0")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def byte_count(request: Request, name: str) -> int | None:
    """The header `name` as a byte count (ASCII digits only, sent at most once), or None."""
    values = request.headers.getlist(name)
    if not values:
        return None
    title = "-".join(part.capitalize() for part in name.split("-"))
    if len(values) > 1:
        raise ApiError(400, f"{title} header sent {len(values)} times: send it once")
    value = values[0].strip(" \t")
    if not _BYTE_COUNT.fullmatch(value):
        raise ApiError(
            400, f"{title} header {value[:20]!r} is not a byte count (1-15 ASCII digits)"
        )
    return int(value)


async def read_body(request: Request, limit: int, timeout_s: float = 10.0, why: str = "") -> bytes:
    """The request body, refusing (413) more than `limit` bytes without buffering them, and
    (408) a body that has not fully arrived `timeout_s` after the request started. `why`
    ends the 413's message (what the limit follows from)."""
    declared = byte_count(request, "content-length")
    if declared is not None and declared > limit:
        raise ApiError(
            413, f"request body of {declared:,} bytes is over the limit of {limit:,} bytes{why}"
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body is over the limit of {limit:,} bytes{why}")
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


async def _parse(json_bytes: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the event loop if it parses at most INLINE_JSON_BYTES of JSON, else on
    the replica's JSON thread."""
    if json_bytes <= INLINE_JSON_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_PARSER, fn, *args)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json(body: bytes, max_values: int, what: str) -> Any:
    """`body` parsed with the JSON limits; `what` says where `max_values` comes from."""
    try:
        return jsonlimits.loads(body, max_values=max_values)
    except jsonlimits.TooManyValues as err:
        raise ApiError(413, f"JSON body refused: {err} ({what})") from None
    except jsonlimits.JsonLimitError as err:
        raise ApiError(400, f"JSON body refused: {err}") from None
    except ValueError as err:  # pydantic_core.from_json: syntax, encoding
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
        req = await _parse(len(body), _predict_json, body, max_images)
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


def _predict_json(body: bytes, max_images: int) -> PredictJson:
    try:
        return PredictJson.model_validate(
            _json(body, max_images + PREDICT_ENVELOPE_VALUES, f"at most {max_images} images")
        )
    except ValidationError as err:
        raise ApiError(400, _validation_message(err)) from None


def v2_json_limits(max_images: int) -> tuple[int, int]:
    """(bytes, values) the JSON of a v2 request of `max_images` images may need at most."""
    values = max_images * IMAGE_VALUES
    return V2_ENVELOPE_BYTES + values * V2_VALUE_BYTES, V2_ENVELOPE_VALUES + values


async def read_infer(request: Request, args: ServeArgs) -> tuple[InferRequest, torch.Tensor]:
    """Read and parse a v2 request, its size bounded by what `args.max_images` images need:
    JSON at most `v2_json_limits`; with binary tensor data, that JSON plus 4 bytes a value."""
    json_limit = min(v2_json_limits(args.max_images)[0], args.max_body_bytes)
    why = f" (what a v2 request of {args.max_images} images needs"
    json_size = byte_count(request, v2binary.HEADER)
    if json_size is None:
        limit, why = json_limit, why + ": send fewer images, or the tensor as binary data)"
    else:
        declared = byte_count(request, "content-length")
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
        binary_limit = args.max_images * IMAGE_VALUES * v2binary.DTYPES["FP32"].itemsize
        limit = min(json_size + binary_limit, args.max_body_bytes)
    body = await read_body(request, limit, args.body_timeout_s, why)
    return await _parse(
        len(body) if json_size is None else json_size, parse_infer, request, body, args.max_images
    )


def parse_infer(
    request: Request, body: bytes, max_images: int
) -> tuple[InferRequest, torch.Tensor]:
    """An Open Inference Protocol v2 request (JSON, or JSON + binary tensor data) -> uint8
    N x 3 x 32 x 32. One input, `input`: its datatype (UINT8 or FP32) and shape ([N,32,32,3]
    or [N,3,32,32]) say how to read it. read_infer runs it off the event loop for large
    bodies: it reads nothing of `request` but its (already parsed) headers."""
    media = _media_type(request)
    json_size = byte_count(request, v2binary.HEADER)
    binary = b""
    if json_size is not None:
        if media not in ("application/json", "application/octet-stream", ""):
            raise ApiError(
                415,
                f"unsupported Content-Type {media!r} for a binary v2 request: "
                f"use application/octet-stream",
            )
        try:
            body, binary = v2binary.split_body(body, json_size)
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
        req = InferRequest.model_validate(
            _json(
                body,
                v2_json_limits(max_images)[1],
                f"what a v2 request of {max_images} images needs",
            )
        )
    except ValidationError as err:
        raise ApiError(400, _validation_message(err)) from None
    tensor = req.inputs[0]
    shape = tensor.shape
    if shape[0] > max_images:
        raise ApiError(413, f"{shape[0]} images in one request; the limit is {max_images}")
    expected = int(np.prod(shape))
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    try:
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
