"""The Open Inference Protocol's binary tensor data extension (as Triton and `tritonclient`
speak it by default).

Request: header `Inference-Header-Content-Length: N`; the body's first N bytes are the JSON
request, the rest is raw tensor bytes (little-endian, row-major), one slice per input whose
`parameters.binary_data_size` says its length, in input order.
Response: when the request asks for it (request parameter `binary_data_output: true`, or an
output's `parameters.binary_data: true`), outputs carry `parameters.binary_data_size` instead
of `data`, and their bytes follow the JSON; the response header
`Inference-Header-Content-Length` gives the JSON's length.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from serve.http.errors import ApiError
from serve.protocols.v2_schemas import RequestedOutput, RequestParameters

HEADER = "inference-header-content-length"
DTYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}


def split_body(body: bytes, json_size: int) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a body whose Inference-Header-Content-Length is
    `json_size` (already read as a byte count, see serve/http/body.py `byte_count`)."""
    if json_size == 0 or json_size > len(body):
        raise ApiError(
            400,
            f"Inference-Header-Content-Length {json_size:,} does not fit a body of "
            f"{len(body):,} bytes",
        )
    return body[:json_size], body[json_size:]


def tensor_from_bytes(data: bytes, datatype: str, expected: int) -> np.ndarray:
    """Raw bytes of one input -> flat array of its datatype, `expected` values long."""
    dtype = DTYPES[datatype]
    if len(data) != expected * dtype.itemsize:
        raise ApiError(
            400,
            f"input has {len(data)} bytes of binary data; its shape and datatype "
            f"{datatype} need {expected * dtype.itemsize}",
        )
    return np.frombuffer(data, dtype=dtype)


def wants_binary_output(
    request_parameters: RequestParameters | None, outputs: list[RequestedOutput] | None
) -> bool:
    if outputs:
        return any(o.parameters is not None and o.parameters.binary_data for o in outputs)
    return request_parameters is not None and request_parameters.binary_data_output


def encode_response(response: dict, arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """(body, JSON length): `response` with each named output's data moved after the JSON."""
    blobs = []
    for out in response["outputs"]:
        raw = np.ascontiguousarray(arrays[out["name"]], dtype=DTYPES[out["datatype"]]).tobytes()
        out.pop("data", None)
        out["parameters"] = {**(out.get("parameters") or {}), "binary_data_size": len(raw)}
        blobs.append(raw)
    header = json.dumps(response, separators=(",", ":")).encode()
    return header + b"".join(blobs), len(header)
