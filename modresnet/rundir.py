"""The run directory every training path writes and every consumer reads.

    <storage>/<name>/
      config.yaml      the resolved config
      metrics.jsonl    one JSON object per epoch (epoch, losses, accuracies, lr, images_per_s)
      best/            checkpoint with the best validation accuracy (model.safetensors + .json)
      last/            latest checkpoint plus its resumable training state
      curves.png       train/validation accuracy and loss per epoch
      confusion.png    test-set confusion matrix of best/
      test.json        the final test evaluation of best/ (written last: the run is finished)
      .lock            held by the process training the run (one at a time)

Every file is written atomically (temp file, fsync, rename) and best/ and last/ are replaced
whole by `files.replace_dir`; `RunDir.recover` repairs a replacement a crash interrupted.
Once training ends nothing in best/ changes: `evaluation.finalize` writes the test result
beside it in test.json.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modresnet import checkpoint, files
from modresnet.config import Config
from modresnet.errors import UserError


class RunInUseError(UserError):
    """Another process holds the run's lock (the same --name is training right now)."""


class RunExistsError(UserError, ValueError):
    """A run of that name exists and the user did not ask to resume it."""

    @classmethod
    def at(cls, where: object) -> RunExistsError:
        return cls(
            f"run directory {where} already holds a run; pass --resume to continue it, "
            f"or choose another --name"
        )


def default_storage() -> Path:
    return Path(os.environ.get("MODRESNET_RUNS", Path.home() / "modresnet-runs")).expanduser()


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def test_file(self) -> Path:
        return self.path / "test.json"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def create(self, config: Config) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(self.path / "config.yaml", config.to_yaml())
        return self

    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run's lock for as long as it trains: one process per run at a time. An
        flock, so the kernel drops it when the holder dies (a crash never leaves it stuck)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"--storage: cannot write to {self.path.parent} "
                f"({err.strerror or err}); choose a writable --storage"
            ) from None
        busy = RunInUseError(
            f"run {self.path} is being written by another modresnet process "
            f"right now (it holds {self.lock_file}); wait for it to finish, "
            f"or choose another --name"
        )
        with files.hold_lock(self.lock_file, busy=busy):
            yield self

    def recover(self) -> list[str]:
        """Repair best/ and last/ after a crash in the middle of replacing them (see
        files.recover_dir); call with the lock held. Returns what was repaired."""
        return [
            f"{self.path}: {done}" for d in (self.best, self.last) if (done := files.recover_dir(d))
        ]

    def exists(self) -> bool:
        return self.metrics_file.exists() or self.last.exists()

    def check_new(self, resume: bool) -> None:
        """Refuse to train over a run that exists unless the user asked to resume it."""
        if self.exists() and not resume:
            raise RunExistsError.at(self.path)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite the whole history: a resumed run keeps every epoch exactly once."""
        files.atomic_write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in history))


def test_result(checkpoint_dir: Path, sha256: str) -> dict[str, Any] | None:
    """The run's test.json when `checkpoint_dir` is a run's best/ and the result scored these
    weights (`sha256`); None for a bare checkpoint folder or an unfinished run."""
    path = Path(checkpoint_dir)
    if path.name != "best":
        return None
    try:
        result = json.loads((path.parent / "test.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("sha256") == sha256 else None


def _copy_checkpoint(src: Path, dst: Path, model_only: bool) -> None:
    with files.atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file() and (not model_only or f.name in (checkpoint.WEIGHTS, checkpoint.META)):
                shutil.copy2(f, tmp / f.name)


def write_run_dir(run: RunDir, config: Config, latest: Path, best: Path) -> list[dict[str, Any]]:
    """The run directory from finished checkpoints (a Ray Train run's, a Tune trial's): history
    from the latest, best/ from the best by val_acc, last/ with the resumable state."""
    run.create(config)
    history = checkpoint.training_history(latest)
    run.write_metrics(history)
    _copy_checkpoint(best, run.best, model_only=True)
    _copy_checkpoint(latest, run.last, model_only=False)
    return history
