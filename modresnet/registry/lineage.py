"""What a registered version records about where it came from, read from a finished run: the
run's URI, the config that trained it and its hash, the CIFAR-10 files' md5s, the search and
trial of a tune export, the test result of these exact weights, and the code version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from modresnet import storage
from modresnet.registry.refs import RegistryError

BEST_RUN, SUMMARY = "best-run", "summary.json"  # how `modresnet tune` exports its best trial


@dataclass(frozen=True)
class RunRecord:
    checkpoint: Path  # local folder holding model.safetensors + model.json
    sha256: str
    val_acc: float | None
    test_acc: float
    test_md5: str
    test_n: int
    lineage: dict[str, Any]


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def data_md5s() -> dict[str, str]:
    """The md5 of every CIFAR-10 file a run reads (each is checked against it on load)."""
    from modresnet.data import META_FILE, TEST_FILES, TRAIN_FILES

    return {**TRAIN_FILES, **TEST_FILES, META_FILE[0]: META_FILE[1]}


@cache
def code_version() -> str:
    """The package version, with the git commit (and "-dirty") when this is a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = f"modresnet {version('modresnet')}"
    except PackageNotFoundError:
        text = "modresnet (not installed)"
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return text
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text} git {commit[:12]}{'-dirty' if dirty else ''}"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def read_run(run: str | os.PathLike[str]) -> RunRecord:
    """The run (a run directory, its best/, or one in object storage) as a version records it.
    Refuses a checkpoint without a test.json that names its weights' sha256 and test set md5."""
    from modresnet import checkpoint  # imports torch: not at `modresnet --help`

    text = os.fspath(run)
    where = storage.parse(text)
    fetched = storage.local_run(text)
    local = Path(os.fspath(fetched)) if fetched is not None else Path(text)
    folder = checkpoint.resolve(local)
    meta = checkpoint.read_meta(folder)
    sha = checkpoint.sha256_file(folder / checkpoint.WEIGHTS)
    if sha != meta.get("sha256"):
        raise RegistryError(
            f"{folder / checkpoint.WEIGHTS}: sha256 {sha[:12]}... does not match the "
            f"{str(meta.get('sha256'))[:12]}... in {checkpoint.META}; the weights were changed "
            f"after saving. Refusing to register them."
        )
    test = _test_result(text, folder, sha)
    run_uri = where.uri if isinstance(where, storage.Location) else str(local.resolve())
    search, trial = _search_of(where, local)
    config = meta.get("config", {})
    lineage = {
        "run_uri": run_uri,
        "config_hash": config_hash(config),
        "config": config,
        "data_md5s": data_md5s(),
        "search": search,
        "trial": trial,
        "code_version": code_version(),
    }
    val_acc = test.get("val_acc", meta.get("metrics", {}).get("val_acc"))
    return RunRecord(
        checkpoint=folder,
        sha256=sha,
        val_acc=None if val_acc is None else float(val_acc),
        test_acc=float(test["test_acc"]),
        test_md5=str(test["test_md5"]),
        test_n=int(test["n"]),
        lineage=lineage,
    )


def _test_result(text: str, folder: Path, sha: str) -> dict[str, Any]:
    from modresnet.rundir import test_result

    result = test_result(folder, sha)
    if result is None:
        raise RegistryError(
            f"{text}: no test.json naming these weights (sha256 {sha[:12]}...) beside "
            f"{folder}; register a finished run directory (training writes test.json last)"
        )
    missing = [k for k in ("test_acc", "test_md5", "n") if k not in result]
    if missing:
        raise RegistryError(
            f"{folder.parent / 'test.json'}: records no {', '.join(missing)}; finish the run "
            f"with this modresnet (train --resume), which scores best/ and records them"
        )
    return result


def _search_of(where: storage.Location | Path | None, local: Path) -> tuple[str | None, str | None]:
    """(the search's experiment folder, its best trial) when the run is a tune export."""
    if isinstance(where, storage.Location):
        parent = where.path.rsplit("/", 1)
        if len(parent) < 2 or parent[1] != BEST_RUN:
            return None, None
        experiment = storage.Location(where.scheme, parent[0], where.query)
        return experiment.uri, _remote_trial(experiment)
    run = local.resolve()
    if run.name == "best":
        run = run.parent
    if run.name != BEST_RUN or not (run.parent / SUMMARY).is_file():
        return None, None
    return str(run.parent), _trial(_read_json((run.parent / SUMMARY).read_bytes()))


def _remote_trial(experiment: storage.Location) -> str | None:
    fs, root = experiment.filesystem()
    try:
        with fs.open_input_stream(f"{root}/{SUMMARY}") as f:
            raw = f.read(storage.MAX_META + 1)
    except Exception:  # noqa: BLE001 - missing or unreadable: no trial recorded
        return None
    return _trial(_read_json(raw)) if len(raw) <= storage.MAX_META else None


def _read_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _trial(summary: Any) -> str | None:
    trial = summary.get("best_trial") if isinstance(summary, dict) else None
    return str(trial) if trial is not None else None
