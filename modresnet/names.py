"""The one rule for text from outside that ends up naming a local path.

Run and experiment names, sha256 fields read from a sidecar, object keys listed in a bucket:
each is checked here before it is joined to a folder, and every path the code then writes or
removes is checked to resolve inside the folder it belongs to. A name that fails is a
one-line `UnsafeNameError` (exit 2) naming the field and the rule.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from modresnet.errors import UserError

MAX_NAME = 128  # W&B run ids and most filesystems' 255-byte components stay clear
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
NAME_RULE = f"letters, digits, '.', '_', '-'; at most {MAX_NAME} characters; not '.' or '..'"


class UnsafeNameError(UserError, ValueError):
    """A name from a flag, a file or a bucket that could name a path outside its folder."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_NAME
        and value not in (".", "..")
        and _NAME.fullmatch(value) is not None
    )


def name(value: object, field: str) -> str:
    """`value` if it is a safe single path component (a run, experiment or file name)."""
    if not is_name(value):
        raise UnsafeNameError(f"{field}: {_shown(value)} is not a valid name ({NAME_RULE})")
    return str(value)


def sha256(value: object, field: str) -> str:
    """`value` if it is a sha256 as we write it: 64 lowercase hex digits."""
    if not isinstance(value, str) or _SHA256.fullmatch(value) is None:
        raise UnsafeNameError(f"{field}: {_shown(value)} is not a sha256 (64 hex digits)")
    return value


def relative_key(key: str, field: str) -> PurePosixPath:
    """An object key below a prefix, as a relative path whose every part is a safe name."""
    parts = key.split("/")
    if not key or not all(is_name(p) for p in parts):
        raise UnsafeNameError(
            f"{field}: object key {_shown(key)} is not a path of valid names ({NAME_RULE})"
        )
    return PurePosixPath(*parts)


def inside(root: Path, path: Path, field: str) -> Path:
    """`path`, once it resolves (links followed) to somewhere strictly below `root`."""
    base, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved == base or base not in resolved.parents:
        raise UnsafeNameError(f"{field}: {path} resolves to {resolved}, outside {base}")
    return path
