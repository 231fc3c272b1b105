"""Crash-safe file operations: atomic file and folder writes, their repair after a crash, and
the one lock helper. A crash (power cut, SIGKILL) at any point leaves either the old or the
new content, never a torn file or a half folder."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (names created/renamed in it), to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so a crash leaves either the old or the new content, never a torn one:
    write a temp file of a unique name beside it (two writers never share one), fsync, rename
    over, fsync the folder. The file gets the mode a plain write would (0666 less umask)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of `text` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written folder into place so a crash never leaves a half checkpoint.

    The one atomic-folder write of the project: fsync every file in `src` and `src` itself,
    rename `dst` to `dst.old`, rename `src` to `dst`, fsync the parent, then delete the old
    copy. A crash at any point leaves a state `recover_dir` repairs: between the renames `dst`
    is missing and `dst.old` holds the previous complete version."""
    src, dst = Path(src), Path(dst)
    for f in src.rglob("*"):
        if f.is_file():
            fsync_path(f)
    fsync_path(src)
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    fsync_path(dst.parent)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """A fresh `dest.tmp` folder to write into, that replaces `dest` whole (`replace_dir`)
    when the block ends and is removed if it raises: readers only ever see a complete old or
    new `dest`. A crash inside the block leaves `dest.tmp`, which `recover_dir` deletes."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dest)


def recover_dir(dst: Path) -> str | None:
    """Repair what a crash inside `replace_dir` (or while writing `dst.tmp`) left behind.

    `dst` missing with `dst.old` present: the crash came between the two renames; `dst.old` is
    the last complete version and goes back into place (the newer `dst.tmp` may be complete
    too, but nothing says so, so it is dropped and its epoch is trained again). `dst` present:
    leftover `dst.old` / `dst.tmp` are stale and deleted. Returns what it did, or None."""
    dst = Path(dst)
    old, tmp = dst.with_name(dst.name + ".old"), dst.with_name(dst.name + ".tmp")
    done = None
    if not dst.exists() and old.exists():
        old.rename(dst)
        fsync_path(dst.parent)
        done = f"restored {dst.name}/ from {old.name}/ (a crash interrupted its last update)"
    elif old.exists():
        shutil.rmtree(old)
        done = f"removed the stale {old.name}/"
    if tmp.exists():
        shutil.rmtree(tmp)
        done = (done + "; " if done else "") + f"removed the unfinished {tmp.name}/"
    return done


@contextmanager
def hold_lock(path: Path, busy: Exception | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` for the block. An flock, so the kernel drops
    it when the holder dies: a crash never leaves it stuck. Without `busy` it waits for
    another holder; with it, another holder makes it raise `busy` at once."""
    lock = FileLock(path)
    if busy is None:
        lock.acquire()
    else:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            raise busy from None
    try:
        yield
    finally:
        lock.release()
