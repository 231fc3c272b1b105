"""Reading an untrusted request body, for every protocol: size and time bounds, byte-count
headers, the media type, and JSON parsed with limits (serve/http/jsonlimits.py), large bodies
off the event loop."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request

from serve.http.errors import ApiError
from serve.http.jsonlimits import JsonLimitError, TooManyValues, loads

T = TypeVar("T")

# JSON up to this size parses on the event loop (under a millisecond); larger bodies parse on
# one thread per replica, so the loop keeps answering and at most one parse's objects exist.
INLINE_JSON_BYTES = 64 * 1024
_PARSER = ThreadPoolExecutor(1, thread_name_prefix="json")
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")  # not isdigit() ("²") nor int() ("٣", "+1", "1_0")


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


async def parse(json_bytes: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the event loop if it parses at most INLINE_JSON_BYTES of JSON, else on
    the replica's JSON thread."""
    if json_bytes <= INLINE_JSON_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_PARSER, fn, *args)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def json_value(body: bytes, max_values: int, what: str) -> Any:
    """`body` parsed with the JSON limits; `what` says where `max_values` comes from."""
    try:
        return loads(body, max_values=max_values)
    except TooManyValues as err:
        raise ApiError(413, f"JSON body refused: {err} ({what})") from None
    except JsonLimitError as err:
        raise ApiError(400, f"JSON body refused: {err}") from None
    except ValueError as err:  # pydantic_core.from_json: syntax, encoding
        raise ApiError(400, f"body is not valid JSON ({err})") from None
