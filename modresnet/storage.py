"""Object storage for runs: `--storage s3://bucket/prefix` (or gs://, file://).

Plain pyarrow filesystems, the ones Ray Train and Tune resolve `storage_path` with
(`pyarrow.fs.FileSystem.from_uri`), so modresnet and Ray read the same credentials from the
standard environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or ~/.aws), AWS_REGION,
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 for an S3-compatible server (MinIO, moto, ...);
GOOGLE_APPLICATION_CREDENTIALS for gs://. No Ray import here.

- `parse(text)`: a --storage or RUN argument -> a `Location` (None for a plain local path;
  file:// becomes a local path too). Accepts the form a `pathlib.Path` argument leaves
  (`s3:/bucket/x`, one slash), so typer's Path options need no change.
- `publish(local_run, uri)`: upload a finished core run directory, test.json last, so a
  reader that finds test.json finds the whole run.
- `fetch_run(uri)`: download a run's best/ (and its small top-level files) into a local cache
  keyed by the URI and the weights' sha256 (reused while they match); returns the local path.
  Nothing a bucket holds names a local path before `modresnet.names` has checked it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from modresnet import names
from modresnet.errors import UserError, one_line

if TYPE_CHECKING:
    import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3", "gs", "gcs")
SKIP_ON_PUBLISH = {".lock", "ray"}  # the lock is local; Ray writes ray/ to the storage itself
FINISHED = "test.json"  # written last by finalize, uploaded last by publish

_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):/+(?P<rest>.*)$")


class StorageError(UserError):
    """An object-storage location that cannot be used (scheme, credentials, endpoint)."""


@dataclass(frozen=True)
class Location:
    """A run or storage root in an object store: `uri` is what Ray gets as storage_path."""

    scheme: str
    path: str  # bucket/prefix, no leading or trailing slash
    query: str = ""  # e.g. region=...&endpoint_override=... (passed through to pyarrow)

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.uri

    def join(self, *parts: str) -> Location:
        return Location(
            self.scheme, "/".join([self.path, *(p.strip("/") for p in parts)]), self.query
        )

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path inside it); one-line StorageError when it cannot be built."""
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(self.uri)
        except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise StorageError(
                f"--storage {self.uri}: {one_line(err)}{_hint(self.scheme)}"
            ) from None
        return fs, path.rstrip("/")


def _hint(scheme: str) -> str:
    if scheme == "s3":
        return (
            "; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION), and "
            "AWS_ENDPOINT_URL for an S3-compatible server"
        )
    return "; set GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth application-default login`)"


def parse(text: str | os.PathLike[str] | None) -> Location | Path | None:
    """A local Path, a remote Location, or None for None. Unknown schemes are an error."""
    if text is None:
        return None
    raw = os.fspath(text)
    m = _URI.match(raw)
    if not m or len(m.group("scheme")) == 1:  # C:/... is a Windows drive, not a scheme
        return Path(raw).expanduser()
    scheme, rest = m.group("scheme").lower(), m.group("rest")
    if scheme == "file":
        return Path("/" + rest.split("?")[0].lstrip("/"))
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(
            f"{raw}: unsupported storage scheme {scheme}://; use a local path, "
            f"file://, s3://bucket/prefix or gs://bucket/prefix"
        )
    path, _, query = rest.partition("?")
    path = path.strip("/")
    if not path:
        raise StorageError(f"{raw}: no bucket; use {scheme}://BUCKET/PREFIX")
    return Location("gs" if scheme == "gcs" else scheme, path, query)


def is_remote(value: object) -> bool:
    return isinstance(value, Location)


def _info(loc: Location, fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except Exception as err:  # noqa: BLE001 - credentials, endpoint, permissions
        raise StorageError(
            f"{loc.uri}: cannot reach the object store ({one_line(err)}){_hint(loc.scheme)}"
        ) from None


def exists(loc: Location) -> bool:
    import pyarrow.fs as pafs

    fs, path = loc.filesystem()
    return bool(_info(loc, fs, path).type != pafs.FileType.NotFound)


def check_writable(loc: Location) -> None:
    """Write and delete one small object under `loc`: fails in seconds, in one line, on a
    missing bucket, missing credentials or an unreachable endpoint."""
    fs, path = loc.filesystem()
    probe = f"{path}/.modresnet-write-test-{os.getpid()}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except Exception as err:  # noqa: BLE001
        raise StorageError(
            f"--storage {loc.uri}: cannot write there ({one_line(err)}){_hint(loc.scheme)}"
        ) from None


def publish(local_run: Path, loc: Location) -> None:
    """Upload the run directory `local_run` to `loc`, test.json last (the "finished" mark)."""
    fs, root = loc.filesystem()
    local_run = Path(local_run)
    files = sorted(
        p
        for p in local_run.rglob("*")
        if p.is_file()
        and p.relative_to(local_run).parts[0] not in SKIP_ON_PUBLISH
        and not any(part.endswith(".tmp") for part in p.relative_to(local_run).parts)
    )
    files.sort(key=lambda p: p.name == FINISHED)  # every run's test.json after its files
    try:
        for f in files:
            with (
                open(f, "rb") as src,
                fs.open_output_stream(f"{root}/{f.relative_to(local_run).as_posix()}") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
    except Exception as err:  # noqa: BLE001
        raise StorageError(
            f"uploading {local_run} to {loc.uri} failed ({one_line(err)}); the "
            f"run is complete in {local_run}"
        ) from None


def cache_root() -> Path:
    return (
        Path(os.environ.get("MODRESNET_CACHE", Path.home() / ".cache" / "modresnet"))
        / "remote-runs"
    )


MAX_FILE = 1 << 30  # a run's largest file is its ~11 MB weights; a bucket may not fill the disk
MAX_META = 1 << 20
COMPLETE = ".complete"  # written last into a cache entry: the entry is whole and ours


def _read_capped(src: pafs.NativeFile, out: BinaryIO, limit: int, what: str) -> None:
    """Copy at most `limit` bytes, whatever size the store claimed for the object."""
    copied = 0
    while chunk := src.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise StorageError(f"{what}: larger than {limit >> 20} MiB; not a modresnet run file")
        out.write(chunk)


def _listed_files(
    loc: Location, fs: pafs.FileSystem, root: str, folder: str
) -> list[tuple[PurePosixPath, pafs.FileInfo]]:
    """The files directly in `folder` with their paths relative to `root`, every key checked
    to be a path of safe names below `root` before it names anything local."""
    import pyarrow.fs as pafs

    out = []
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if info.type != pafs.FileType.File:
            continue
        if not info.path.startswith(root + "/"):
            raise StorageError(f"{loc.uri}: the store listed {info.path!r}, outside {root}/")
        rel = names.relative_key(info.path[len(root) + 1 :], loc.uri)
        if info.size is not None and info.size > MAX_FILE:
            raise StorageError(
                f"{loc.uri}/{rel}: {info.size:,} bytes, larger than {MAX_FILE >> 20} MiB; "
                f"not a modresnet run file"
            )
        out.append((rel, info))
    return out


def _remote_sha(loc: Location, fs: pafs.FileSystem, path: str, rel: str) -> str:
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read(MAX_META + 1)
        meta = json.loads(raw) if len(raw) <= MAX_META else None
    except Exception as err:  # noqa: BLE001 - the store, or a file that is not JSON
        raise StorageError(f"{loc.uri}: cannot read {rel} ({one_line(err)})") from None
    sha = meta.get("sha256") if isinstance(meta, dict) else None
    return names.sha256(sha, f"{loc.uri}/{rel}: sha256")


def _cache_entry(loc: Location, sha: str) -> Path:
    """cache_root()/<last part of the URI, made safe>-<hash of the URI>-<sha256[:12]>."""
    label = re.sub(r"[^A-Za-z0-9_-]", "-", loc.path.rsplit("/", 1)[-1])[:48] or "run"
    key = hashlib.sha256(loc.uri.encode()).hexdigest()[:16]
    root = cache_root()
    return names.inside(root, root / f"{label}-{key}-{sha[:12]}", "cache entry")


def _is_complete(entry: Path) -> bool:
    return entry.is_dir() and not entry.is_symlink() and (entry / COMPLETE).is_file()


def fetch_run(loc: Location) -> Path:
    """A local copy of the run (or checkpoint folder) at `loc`: best/ and the top-level files
    of a run directory, or the files of a checkpoint folder. Cached under
    ~/.cache/modresnet/remote-runs (or $MODRESNET_CACHE) by URI and weights sha256.

    Everything the bucket says is untrusted: the sha256 must be 64 hex digits, every key a
    path of safe names, every file under MAX_FILE, and the entry is only ever created (a
    download into a fresh temp folder renamed into place), never removed or replaced."""
    import pyarrow.fs as pafs

    from modresnet.checkpoint import META, WEIGHTS

    fs, root = loc.filesystem()
    if _info(loc, fs, f"{root}/best/{WEIGHTS}").type == pafs.FileType.File:
        ckpt = "best"
    elif _info(loc, fs, f"{root}/{WEIGHTS}").type == pafs.FileType.File:
        ckpt = ""
    else:
        raise StorageError(
            f"{loc.uri}: not a modresnet run or checkpoint (no {WEIGHTS} in it or in best/)"
        )
    meta_rel = f"{ckpt}/{META}" if ckpt else META
    sha = _remote_sha(loc, fs, f"{root}/{meta_rel}", meta_rel)
    target = _cache_entry(loc, sha)
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent))
    try:
        wanted = _listed_files(loc, fs, root, root)
        if ckpt:
            wanted += _listed_files(loc, fs, root, f"{root}/{ckpt}")
        for rel, info in wanted:
            dest = names.inside(tmp, tmp / rel, loc.uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(dest, "xb") as out:
                _read_capped(src, out, MAX_FILE, f"{loc.uri}/{rel}")
        if _remote_sha(loc, pafs.LocalFileSystem(), str(tmp / meta_rel), meta_rel) != sha:
            raise StorageError(f"{loc.uri}: {meta_rel} changed while downloading; try again")
        (tmp / COMPLETE).write_text(loc.uri + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not _is_complete(target):  # another fetch may have just put the same entry there
                raise StorageError(
                    f"{target} exists and is not a complete modresnet cache entry; "
                    f"move it out of the way (or set MODRESNET_CACHE) and try again"
                ) from None
            shutil.rmtree(tmp)
    except Exception as err:  # noqa: BLE001
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, UserError):
            raise
        raise StorageError(f"{loc.uri}: download failed ({one_line(err)})") from None
    return target


def local_run(value: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """At the CLI edge: a RUN/checkpoint argument that names object storage is fetched into
    the local cache; anything else comes back unchanged (the local code runs as before)."""
    if value is None:
        return value
    parsed = parse(value)
    if isinstance(parsed, Location):
        return fetch_run(parsed)
    if isinstance(parsed, Path) and re.match(r"^file:/", os.fspath(value)):
        return parsed
    return value


def local_root(where: Location | Path) -> Path:
    """The local folder a command writes its runs to: the staging folder of an object-store
    location, else the path itself."""
    return staging_root(where) if isinstance(where, Location) else where.expanduser()


def staging_root(loc: Location) -> Path:
    """The local folder where the driver writes the run directories it publishes to `loc`
    (one per storage URI, under the cache)."""
    key = hashlib.sha256(loc.uri.encode()).hexdigest()[:16]
    return cache_root().parent / "staging" / key
