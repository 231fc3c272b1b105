"""JSON parsing for untrusted request bodies: bounded nesting depth and bounded numbers.

`json.loads` alone turns hostile input into a 500: nesting deep enough to exhaust the C
recursion limit (RecursionError), integers over Python's 4,300-digit conversion limit
(ValueError), integers too big for numpy (OverflowError later), NaN/Infinity literals.
`loads` refuses these with `JsonLimitError` (a ValueError) whose message names the limit;
depth and digit runs are checked on the raw bytes (strings blanked) *before* parsing, with
vectorized scans, so a 10 MB body costs tens of milliseconds to refuse.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32          # a v2 tensor nested [N][32][32][3] inside its request is depth 6
MAX_NUMBER_DIGITS = 40  # digits in a row: more than any int64 or float64 needs written out

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class JsonLimitError(ValueError):
    """The body is JSON (or close to it) but over one of the limits; the message says which."""


def _strip_strings(body: bytes) -> bytes:
    return _STRING.sub(b'""', body) if b'"' in body else body


def nesting_depth(body: bytes) -> int:
    """The deepest [ / { nesting in `body`, ignoring brackets inside strings."""
    return _depth(_strip_strings(body))


def _depth(stripped: bytes) -> int:
    arr = np.frombuffer(stripped, dtype=np.uint8)
    steps = (np.isin(arr, (ord("["), ord("{"))).astype(np.int32)
             - np.isin(arr, (ord("]"), ord("}"))).astype(np.int32))
    if not steps.size:
        return 0
    return int(np.cumsum(steps).max(initial=0))


_LONG_NUMBER = re.compile(rb"[0-9]{%d,}" % (MAX_NUMBER_DIGITS + 1))


def _constant(text: str) -> Any:
    raise JsonLimitError(f"{text} is not JSON: only finite numbers are allowed")


def loads(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; raises `JsonLimitError` (limits) or `ValueError` (not JSON)."""
    stripped = _strip_strings(body)
    depth = _depth(stripped)
    if depth > max_depth:
        raise JsonLimitError(f"JSON nested {depth:,} levels deep; the limit is {max_depth}")
    long = _LONG_NUMBER.search(stripped)
    if long:
        run = re.match(rb"[0-9]*", stripped[long.start():]).group()
        raise JsonLimitError(f"a number with {len(run):,} digits in a row; numbers may have at "
                             f"most {MAX_NUMBER_DIGITS}")
    try:
        # Hooks on every int/float would cost ~10x; parse_constant only sees NaN/Infinity.
        # Overflowing exponents (1e400) parse to inf: callers that take numbers check
        # finiteness (see api.py), and pydantic refuses inf for int fields.
        return json.loads(body, parse_constant=_constant)
    except RecursionError:  # unreachable after the depth check; never let it become a 500
        raise JsonLimitError(f"JSON nested too deeply; the limit is {max_depth}") from None
