"""JSON parsing for untrusted request bodies: bounded nesting depth and bounded numbers.

A JSON parser alone turns hostile input into a 500 or a stall: nesting deep enough to
exhaust the C recursion limit, integers over Python's 4,300-digit conversion limit, integers
too big for numpy (OverflowError later), NaN/Infinity literals, and millions of values that
each become a Python object. `loads` refuses these with `JsonLimitError` (a ValueError)
whose message names the limit: depth, digit runs, NaN/Infinity and (optionally) the number
of values are checked on the raw bytes (outside strings) *before* parsing, with a linear
numpy scan in fixed-size blocks, so a 10 MB body costs ~0.1 s and a few MiB to refuse
whatever its content, and a parse never builds more objects than it may. The parse is
pydantic-core's (jiter): ~4x faster than `json.loads` on long arrays of numbers, and the
thread running it holds the GIL that much less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic_core

MAX_DEPTH = 32  # a v2 tensor nested [N][32][32][3] inside its request is depth 6
MAX_NUMBER_DIGITS = 40  # digits in a row: more than any int64 or float64 needs written out
BLOCK_BYTES = 256 * 1024  # the scan's memory is a small multiple of this, whatever the body

_QUOTE, _BACKSLASH = ord('"'), ord("\\")


class JsonLimitError(ValueError):
    """The body is JSON (or close to it) but over one of the limits; the message says which."""


class TooManyValues(JsonLimitError):
    """More values than the caller allows (a request too large, rather than malformed)."""


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a boolean array; ends exclusive."""
    edges = np.flatnonzero(np.diff(mask.view(np.int8), prepend=np.int8(0), append=np.int8(0)))
    return edges[::2], edges[1::2]


def _outside_strings(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """(mask of the bytes outside JSON strings, number of real quotes) of `arr`, which starts
    outside any string and unescaped; O(n) numpy.

    A quote is escaped iff an odd run of backslashes precedes it; the real quotes pair up
    into strings. (No regex: a string pattern that can fail after scanning far is retried
    at each later quote, which is quadratic on e.g. '"' + '\\"' * n.)"""
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
    return np.cumsum(marks[:n], dtype=np.int8) == 0, quotes.size


def _trailing(mask: np.ndarray) -> int:
    """Length of the run of True that ends `mask`."""
    return mask.size if mask.all() else int(np.argmin(mask[::-1]))


@dataclass
class _Scan:
    """What the scan found so far, and what it carries from one block into the next."""

    depth: int = 0
    max_depth: int = 0
    max_digits: int = 0
    commas: int = 0
    in_string: bool = False
    escaping: bool = False  # the block ended in an odd run of backslashes
    digit_run: int = 0  # digits (outside strings) that end the block
    constant: str = ""  # NaN or Infinity, if one was seen outside strings

    def block(self, data: bytes) -> None:
        # The carried state as bytes before the block: an open quote, an escaping backslash.
        prefix = (b'"' if self.in_string else b"") + (b"\\" if self.escaping else b"")
        arr = np.frombuffer(prefix + data, dtype=np.uint8)
        outside, quotes = _outside_strings(arr)
        self.in_string = quotes % 2 == 1
        self.escaping = _trailing(arr == _BACKSLASH) % 2 == 1
        arr, outside = arr[len(prefix) :], outside[len(prefix) :]
        opening = ((arr == ord("[")) | (arr == ord("{"))) & outside
        closing = ((arr == ord("]")) | (arr == ord("}"))) & outside
        where = np.flatnonzero(opening | closing)
        if where.size:
            levels = self.depth + np.cumsum(np.where(opening[where], 1, -1))
            self.max_depth = max(self.max_depth, int(levels.max()))
            self.depth = int(levels[-1])
        self.commas += int(np.count_nonzero((arr == ord(",")) & outside))
        if not self.constant:  # N and I appear in JSON only inside strings
            letters = ((arr == ord("N")) | (arr == ord("I"))) & outside
            if letters.any():
                self.constant = "NaN" if arr[np.argmax(letters)] == ord("N") else "Infinity"
        digits = (arr >= ord("0")) & (arr <= ord("9")) & outside
        if not digits.any():
            self.digit_run = 0
            return
        starts, ends = _runs(digits)
        lengths = ends - starts
        if starts[0] == 0:
            lengths[0] += self.digit_run
        self.max_digits = max(self.max_digits, int(lengths.max()))
        self.digit_run = int(lengths[-1]) if ends[-1] == arr.size else 0


def _scan(body: bytes, max_values: int | None = None) -> _Scan:
    """Nesting depth, digit runs and commas of `body`, all outside strings, in blocks of
    BLOCK_BYTES; stops early once the commas reach `max_values`.

    A JSON text of k values has at least k - 1 - (its arrays and objects) commas, and its
    arrays and objects are values too, so the commas bound what a parse allocates."""
    scan = _Scan()
    view = memoryview(body)
    for start in range(0, len(body), BLOCK_BYTES):
        scan.block(bytes(view[start : start + BLOCK_BYTES]))
        if max_values is not None and scan.commas >= max_values:
            break
    return scan


def loads(body: bytes, max_depth: int = MAX_DEPTH, max_values: int | None = None) -> Any:
    """Parse untrusted JSON; raises `JsonLimitError` (limits), `TooManyValues` (over
    `max_values`, counted as commas outside strings) or `ValueError` (not JSON)."""
    scan = _scan(body, max_values)
    if max_values is not None and scan.commas >= max_values:
        raise TooManyValues(f"{scan.commas + 1:,} values or more; the limit is {max_values:,}")
    if scan.max_depth > max_depth:
        raise JsonLimitError(
            f"JSON nested {scan.max_depth:,} levels deep; the limit is {max_depth}"
        )
    if scan.max_digits > MAX_NUMBER_DIGITS:
        raise JsonLimitError(
            f"a number with {scan.max_digits:,} digits in a row; numbers may have at "
            f"most {MAX_NUMBER_DIGITS}"
        )
    if scan.constant:
        raise JsonLimitError(f"{scan.constant} is not JSON: only finite numbers are allowed")
    # Overflowing exponents (1e400) parse to inf: callers that take numbers check finiteness
    # (serve/protocols/v2.py), and pydantic refuses inf for int fields.
    return pydantic_core.from_json(body, allow_inf_nan=False)
