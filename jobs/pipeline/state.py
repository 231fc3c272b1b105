"""pipeline.json: what a pipeline is (its settings), where each stage stands (status, start
and end times, outputs, the reason for a stop), written atomically after every change to
`<storage>/<name>/pipeline.json` (a local path, or one object in an object store, whose PUT
readers see whole or not at all). A rerun reads it to continue at the first unfinished stage.

One run of a pipeline at a time: the run holds an flock on `<local root>/<name>/.pipeline.lock`
(the kernel drops it when the holder dies). For object storage the local root is the staging
folder of this machine, so two machines running one pipeline into one bucket are not stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from jobs.pipeline.settings import PipelineSettings, PipelineSetupError
from modresnet import files, names
from modresnet import storage as object_storage
from modresnet.errors import one_line

STATE_FILE = "pipeline.json"
LOCK_FILE = ".pipeline.lock"
STAGES = ("search", "retrain", "evaluate", "register", "gate", "promote")
StageStatus = Literal["pending", "running", "done", "skipped", "stopped", "failed", "interrupted"]
PipelineStatus = Literal["running", "finished", "stopped", "failed", "interrupted"]
FINISHED: tuple[StageStatus, ...] = ("done", "skipped")


class PipelineBusyError(PipelineSetupError):
    """Another process runs this pipeline right now."""


class StageState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    status: StageStatus = "pending"
    started: float | None = None
    ended: float | None = None
    attempt: int = 0  # how many times it started
    output: dict[str, Any] = {}
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started


class PipelineState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    settings: PipelineSettings
    status: PipelineStatus = "running"
    reason: str = ""
    created: float
    updated: float
    runs: int = 0  # how many times `pipeline run` started on it
    stages: list[StageState]

    @classmethod
    def new(cls, settings: PipelineSettings) -> PipelineState:
        now = time.time()
        return cls(
            settings=settings,
            created=now,
            updated=now,
            stages=[StageState(name=s) for s in STAGES],
        )

    def stage(self, name: str) -> StageState:
        return next(s for s in self.stages if s.name == name)

    def output(self, name: str) -> dict[str, Any]:
        return self.stage(name).output

    def next_stage(self) -> StageState | None:
        """The first stage not finished: where a run continues."""
        return next((s for s in self.stages if not s.finished), None)

    def reset_from(self, name: str, reason: str) -> None:
        """Make `name` and every later stage pending again (an output they built on is gone)."""
        at = STAGES.index(name)
        for stage in self.stages[at:]:
            stage.status, stage.ended, stage.output = "pending", None, {}
            stage.reason = reason if stage.name == name else ""

    def start(self, name: str) -> StageState:
        stage = self.stage(name)
        stage.status, stage.started, stage.ended, stage.reason = "running", time.time(), None, ""
        stage.attempt += 1
        self.status, self.reason = "running", ""
        return stage

    def end(
        self, name: str, status: StageStatus, output: dict[str, Any] | None = None, reason: str = ""
    ) -> StageState:
        stage = self.stage(name)
        stage.status, stage.ended, stage.reason = status, time.time(), reason
        if output is not None:
            stage.output = output
        if status in ("stopped", "failed", "interrupted"):
            self.status, self.reason = status, f"{name}: {reason}" if reason else name
        elif self.next_stage() is None:
            self.status, self.reason = "finished", ""
        return stage

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


class Store:
    """Where one pipeline's state lives: `<storage>/<name>/pipeline.json`, a path or an object;
    `local` is the folder on this machine for its local files (the lock, Ray's log, staging)."""

    def __init__(self, storage: str | Path, name: str) -> None:
        self.name = names.name(name, "NAME")
        where = object_storage.parse(storage)
        if where is None:
            raise PipelineSetupError("--storage: empty; give a folder or s3://BUCKET/PREFIX")
        self.root = where  # the storage the pipelines of this --storage share
        self.remote = where.join(self.name) if isinstance(where, object_storage.Location) else None
        self.local = object_storage.local_root(where).resolve() / self.name

    @property
    def where(self) -> str:
        """The pipeline's folder, as the user names it."""
        return self.remote.uri if self.remote is not None else str(self.local)

    @property
    def state_uri(self) -> str:
        return f"{self.where}/{STATE_FILE}"

    def read(self) -> PipelineState | None:
        """The saved state, None when none; a torn or hand-broken file is one line."""
        text = self._read_text()
        if text is None:
            return None
        try:
            return PipelineState.model_validate(json.loads(text))
        except (ValueError, ValidationError) as err:
            raise PipelineSetupError(
                f"{self.state_uri}: not a readable pipeline state ({one_line(err)}); move it "
                f"away to start this pipeline again, or choose another NAME"
            ) from None

    def write(self, state: PipelineState) -> None:
        state.updated = time.time()
        data = state.to_json().encode()
        if self.remote is None:
            self.local.mkdir(parents=True, exist_ok=True)
            files.atomic_write_bytes(self.local / STATE_FILE, data)
            return
        fs, root = self.remote.filesystem()
        try:
            with fs.open_output_stream(f"{root}/{STATE_FILE}") as out:
                out.write(data)
        except Exception as err:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ...
            raise object_storage.StorageError(
                f"{self.state_uri}: cannot write ({one_line(err)})"
            ) from None

    def _read_text(self) -> str | None:
        if self.remote is None:
            path = self.local / STATE_FILE
            return path.read_text(encoding="utf-8") if path.exists() else None
        fs, root = self.remote.filesystem()
        if not object_storage.exists(self.remote.join(STATE_FILE)):
            return None
        try:
            with fs.open_input_stream(f"{root}/{STATE_FILE}") as src:
                return bytes(src.read(object_storage.MAX_META)).decode("utf-8")
        except Exception as err:  # noqa: BLE001
            raise object_storage.StorageError(
                f"{self.state_uri}: cannot read ({one_line(err)})"
            ) from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the pipeline for this run: a second run of it at once is refused."""
        try:
            self.local.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PipelineSetupError(
                f"--storage: cannot write to {self.local.parent} ({err.strerror or err})"
            ) from None
        busy = PipelineBusyError(
            f"pipeline {self.name} is running in another process right now (it holds "
            f"{self.local / LOCK_FILE}); wait for it, or watch it with `modresnet pipeline "
            f"status {self.name}`"
        )
        with files.hold_lock(self.local / LOCK_FILE, busy=busy):
            yield


def list_states(storage: str | Path) -> list[tuple[str, PipelineState | None, str]]:
    """(name, state or None, problem) of every pipeline under `storage`, by name."""
    where = object_storage.parse(storage)
    if isinstance(where, object_storage.Location):
        import pyarrow.fs as pafs

        fs, root = where.filesystem()
        selector = pafs.FileSelector(root, recursive=False, allow_not_found=True)
        candidates = [
            i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.Directory
        ]
        found = [n for n in candidates if object_storage.exists(where.join(n, STATE_FILE))]
    elif where is not None and where.is_dir():
        found = [p.parent.name for p in where.glob(f"*/{STATE_FILE}")]
    else:
        found = []
    out: list[tuple[str, PipelineState | None, str]] = []
    for name in sorted(n for n in found if names.is_name(n)):
        try:
            out.append((name, Store(storage, name).read(), ""))
        except PipelineSetupError as err:
            out.append((name, None, str(err)))
    return out
