"""JSON parsing for untrusted request bodies: bounded nesting depth and bounded numbers.

`json.loads` alone turns hostile input into a 500: nesting deep enough to exhaust the C
recursion limit (RecursionError), integers over Python's 4,300-digit conversion limit
(ValueError), integers too big for numpy (OverflowError later), NaN/Infinity literals.
`loads` refuses these with `JsonLimitError` (a ValueError) whose message names the limit;
depth and digit runs are checked on the raw bytes (outside strings) *before* parsing, with
linear numpy scans, so a 10 MB body costs ~0.1 s to refuse whatever its content.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

MAX_DEPTH = 32  # a v2 tensor nested [N][32][32][3] inside its request is depth 6
MAX_NUMBER_DIGITS = 40  # digits in a row: more than any int64 or float64 needs written out

_QUOTE, _BACKSLASH = ord('"'), ord("\\")


class JsonLimitError(ValueError):
    """The body is JSON (or close to it) but over one of the limits; the message says which."""


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a boolean array; ends exclusive."""
    edges = np.flatnonzero(np.diff(mask.view(np.int8), prepend=np.int8(0), append=np.int8(0)))
    return edges[::2], edges[1::2]


def outside_strings(body: bytes) -> np.ndarray:
    """Boolean mask of the bytes of `body` that lie outside JSON strings, in O(n) numpy.

    A quote is escaped iff an odd run of backslashes precedes it; the real quotes pair up
    into strings. (No regex: a string pattern that can fail after scanning far is retried
    at each later quote, which is quadratic on e.g. '"' + '\\"' * n.)"""
    arr = np.frombuffer(body, dtype=np.uint8)
    n = arr.size
    is_quote = arr == _QUOTE
    backslashes = arr == _BACKSLASH
    if backslashes.any():
        starts, ends = _runs(backslashes)
        odd = ends[((ends - starts) % 2 == 1) & (ends < n)]
        is_quote[odd[arr[odd] == _QUOTE]] = False  # escaped quotes
    quotes = np.flatnonzero(is_quote)
    marks = np.zeros(n + 1, dtype=np.int8)
    marks[quotes[::2]] += 1
    marks[quotes[1::2] + 1] -= 1  # a string ends after its closing quote; unclosed: to the end
    return np.cumsum(marks[:n], dtype=np.int8) == 0


def _scan(body: bytes) -> tuple[int, int]:
    """(deepest [ / { nesting, longest run of digits), both outside strings."""
    arr = np.frombuffer(body, dtype=np.uint8)
    if not arr.size:
        return 0, 0
    outside = outside_strings(body)
    opening = ((arr == ord("[")) | (arr == ord("{"))) & outside
    closing = ((arr == ord("]")) | (arr == ord("}"))) & outside
    where = np.flatnonzero(opening | closing)
    depth = int(np.cumsum(np.where(opening[where], 1, -1)).max(initial=0)) if where.size else 0
    digits = (arr >= ord("0")) & (arr <= ord("9")) & outside
    if not digits.any():
        return depth, 0
    starts, ends = _runs(digits)
    return depth, int((ends - starts).max())


def nesting_depth(body: bytes) -> int:
    """The deepest [ / { nesting in `body`, ignoring brackets inside strings."""
    return _scan(body)[0]


def _constant(text: str) -> Any:
    raise JsonLimitError(f"{text} is not JSON: only finite numbers are allowed")


def loads(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; raises `JsonLimitError` (limits) or `ValueError` (not JSON)."""
    depth, digits = _scan(body)
    if depth > max_depth:
        raise JsonLimitError(f"JSON nested {depth:,} levels deep; the limit is {max_depth}")
    if digits > MAX_NUMBER_DIGITS:
        raise JsonLimitError(
            f"a number with {digits:,} digits in a row; numbers may have at "
            f"most {MAX_NUMBER_DIGITS}"
        )
    try:
        # Hooks on every int/float would cost ~10x; parse_constant only sees NaN/Infinity.
        # Overflowing exponents (1e400) parse to inf: callers that take numbers check
        # finiteness (see api.py), and pydantic refuses inf for int fields.
        return json.loads(body, parse_constant=_constant)
    except RecursionError:  # only if the scan under-counted (invalid JSON); never a 500
        raise JsonLimitError(f"JSON nested too deeply; the limit is {max_depth}") from None
