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
whole by `checkpoint.replace_dir`; `RunDir.recover` repairs a replacement a crash interrupted.
Once training ends nothing in best/ changes: the test result lives beside it in test.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modresnet import checkpoint, plots
from modresnet.config import Config
from modresnet.data import Split
from modresnet.errors import UserError
from modresnet.evaluation import evaluate_checkpoint


class RunInUseError(UserError):
    """Another process holds the run's lock (the same --name is training right now)."""


class UnsafeStorageError(UserError):
    """A folder whose pickles a resume would load can be changed by someone else."""


def check_private_storage(exp: Path) -> None:
    """Refuse to resume from `exp` unless only this user can have written it.

    `tune --resume` unpickles Ray's state from the experiment folder (tuner.pkl, the trials'
    state), and unpickling runs code: whoever can write a file in there, or swap the folder
    itself, runs code as the user who resumes. So every folder and file in `exp` must belong
    to this user (or root) and be writable by no one else, and the folder holding `exp` must be
    ours or root's and not writable by others (unless sticky, as /tmp, where others cannot
    rename what is ours)."""
    import stat as st

    uid = os.geteuid()

    def problem(path: Path, info: os.stat_result, parent: bool = False) -> str | None:
        if info.st_uid not in (uid, 0):
            return f"is owned by uid {info.st_uid}, not by you (uid {uid})"
        if st.S_ISLNK(info.st_mode):  # a link's own mode means nothing; its target is checked
            return None
        if info.st_mode & 0o022 and not (parent and info.st_mode & st.S_ISVTX):
            return (
                f"is writable by {'others' if info.st_mode & 0o002 else 'its group'} "
                f"(mode {st.S_IMODE(info.st_mode):o})"
            )
        return None

    def refuse(path: Path, why: str) -> None:
        raise UnsafeStorageError(
            f"--resume: {path} {why}; resuming unpickles Ray's state from "
            f"{exp}, so whoever can write there could run code as you. "
            f"Resume only a search you wrote: after checking its contents, "
            f"chown -R {uid} {exp} && chmod -R go-w {exp}"
        )

    exp = Path(exp)
    why = problem(exp.parent, os.stat(exp.parent), parent=True)
    if why:
        refuse(exp.parent, why)
    for root, dirs, files in os.walk(exp):
        for name in [None, *dirs, *files]:
            path = Path(root) if name is None else Path(root) / name
            info = os.lstat(path)
            why = problem(path, info)
            if (
                not why
                and st.S_ISLNK(info.st_mode)
                and not os.path.realpath(path).startswith(os.path.realpath(exp) + os.sep)
            ):
                why = f"is a symlink to {os.path.realpath(path)}, outside the experiment"
            if why:
                refuse(path, why)


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
        checkpoint.atomic_write_text(self.path / "config.yaml", config.to_yaml())
        return self

    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run's lock for as long as it trains: one process per run at a time. An
        flock, so the kernel drops it when the holder dies (a crash never leaves it stuck)."""
        from filelock import FileLock, Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"--storage: cannot write to {self.path.parent} "
                f"({err.strerror or err}); choose a writable --storage"
            ) from None
        lock = FileLock(self.lock_file, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunInUseError(
                f"run {self.path} is being written by another modresnet process "
                f"right now (it holds {self.lock_file}); wait for it to finish, "
                f"or choose another --name"
            ) from None
        try:
            yield self
        finally:
            lock.release()

    def recover(self) -> list[str]:
        """Repair best/ and last/ after a crash in the middle of replacing them (see
        checkpoint.recover_dir); call with the lock held. Returns what was repaired."""
        return [
            f"{self.path}: {done}"
            for d in (self.best, self.last)
            if (done := checkpoint.recover_dir(d))
        ]

    def exists(self) -> bool:
        return self.metrics_file.exists() or self.last.exists()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite the whole history: a resumed run keeps every epoch exactly once."""
        checkpoint.atomic_write_text(
            self.metrics_file, "".join(json.dumps(m) + "\n" for m in history)
        )


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


def finalize(
    run: RunDir, test: Split, classes: tuple[str, ...], device: torch.device
) -> dict[str, Any]:
    """Evaluate best/ once on the test set; write test.json (with best/'s sha256, so it
    names the weights it scored), curves.png and confusion.png. best/ is never rewritten."""
    loaded = checkpoint.load_model(run.best)
    scores = evaluate_checkpoint(loaded, test, device, tta=loaded.config.train.tta)
    acc = scores.acc
    matrix = plots.confusion_matrix(test.y, scores.predictions, len(classes))
    result = {
        "test_acc": acc,
        "test_loss": scores.loss,
        "n": scores.n,
        "tta": scores.tta,
        "epoch": loaded.meta["epoch"],
        "val_acc": loaded.meta["metrics"].get("val_acc"),
        "sha256": loaded.sha256,
        "per_class_acc": {
            c: float(matrix[i, i] / max(1, int(matrix[i].sum()))) for i, c in enumerate(classes)
        },
    }
    checkpoint.atomic_write_text(run.test_file, json.dumps(result, indent=2))  # last: "finished"
    history = run.read_metrics()
    if history:
        plots.curves(history, run.path / "curves.png")
    plots.confusion(
        matrix,
        classes,
        run.path / "confusion.png",
        f"Test confusion, accuracy {100 * acc:.2f}% (n={len(test)})",
    )
    return result
