"""Checkpoints: weights as safetensors plus a JSON sidecar; never a pickle.

A model checkpoint is a folder with `model.safetensors` and `model.json` (format version,
config, class names, epoch, metrics and the sha256 of the weights file). A resumable
checkpoint adds `train_state.safetensors` + `train_state.json`: optimizer, schedule, EMA,
RNG and epoch, with tensors in safetensors and the rest as JSON. Loading checks the sha256
and refuses a mismatch. The same folder is what Ray Train reports as a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modresnet.config import Config, ConfigError, from_dict
from modresnet.errors import UserError, one_line
from modresnet.model import ModifiedResNet, build_model
from modresnet.parallel import unwrap

if TYPE_CHECKING:  # the engine imports the inference path, which loads checkpoints
    from modresnet.engine import Record, TrainingState

FORMAT = "modresnet-checkpoint"
VERSION = 1
WEIGHTS, META = "model.safetensors", "model.json"
STATE_TENSORS, STATE_META = "train_state.safetensors", "train_state.json"


class CheckpointError(UserError, ValueError):
    """A checkpoint path a user gave is missing, not ours, corrupt or tampered with."""


@dataclass(frozen=True)
class LoadedModel:
    model: ModifiedResNet  # eval mode, on CPU
    config: Config
    meta: dict[str, Any]
    path: Path

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return sha256_file(path)


def save_model(
    directory: Path,
    model: nn.Module,
    config: Config,
    classes: tuple[str, ...],
    epoch: int,
    metrics: dict[str, Any],
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sha = _save_tensors(unwrap(model).state_dict(), directory / WEIGHTS)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": sha,
        "epoch": epoch,
        "classes": list(classes),
        "metrics": metrics,
        "config": config.to_dict(),
    }
    (directory / META).write_text(json.dumps(meta, indent=2))
    return directory


def resolve(path: str | Path) -> Path:
    """A run directory (its best/), a checkpoint folder, or a model.safetensors file."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == WEIGHTS:
        path = path.parent
    if (path / "best" / WEIGHTS).exists():
        return path / "best"
    if (path / WEIGHTS).exists():
        return path
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory; pass a run directory or a "
            f"checkpoint folder holding {WEIGHTS}"
        )
    raise CheckpointError(
        f"{path}: not a modresnet run or checkpoint (no {WEIGHTS} in it or in {path / 'best'})"
    )


def read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{directory / META}: missing; this checkpoint is incomplete"
        ) from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{directory / META}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory / META}: not a {FORMAT} sidecar")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{directory / META}: format version {meta.get('version')}; "
            f"this modresnet reads version {VERSION}"
        )
    return meta


def _verified_tensors(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing; this checkpoint is incomplete")
    actual = sha256_file(path)
    if actual != expected_sha:
        raise CheckpointError(
            f"{path}: sha256 {actual[:12]}... does not match the "
            f"{expected_sha[:12]}... recorded beside it; the file was changed "
            f"or damaged after saving. Refusing to load it."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def load_model(path: str | Path) -> LoadedModel:
    directory = resolve(path)
    meta = read_meta(directory)
    try:
        config = from_dict(meta["config"])
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{directory / META}: bad config ({err})") from None
    tensors = _verified_tensors(directory / WEIGHTS, meta["sha256"])
    model = build_model(config.model)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(
            f"{directory / WEIGHTS}: weights do not fit the model in its config ({one_line(err)})"
        ) from None
    model.eval()
    return LoadedModel(model, config, meta, directory)


def _encode(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested state dicts -> JSON, with tensors moved into `tensors` by key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj


def save_training_state(directory: Path, state: TrainingState) -> None:
    tensors: dict[str, torch.Tensor] = {}
    saved = state.state_dict()
    epoch, history = saved.pop("epoch"), saved.pop("history")
    payload = {key: _encode(value, key, tensors) for key, value in saved.items()}
    sha = _save_tensors(tensors, Path(directory) / STATE_TENSORS)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": sha,
        "epoch": epoch,
        "history": history,
        "state": payload,
    }
    (Path(directory) / STATE_META).write_text(json.dumps(meta))


def save_resumable(
    directory: Path,
    state: TrainingState,
    config: Config,
    classes: tuple[str, ...],
    record: dict[str, Any],
) -> Path:
    """The per-epoch checkpoint every training path writes: the evaluated weights plus the
    training state that resumes them (local last/, Ray Train and Tune reports alike)."""
    save_model(directory, state.eval_model(), config, classes, state.epoch, record)
    save_training_state(directory, state)
    return Path(directory)


def has_training_state(directory: Path) -> bool:
    return (Path(directory) / STATE_META).exists()


def training_history(directory: Path) -> list[Record]:
    """The epoch records behind a resumable checkpoint's weights, from its training state."""
    history: list[Record] = json.loads((Path(directory) / STATE_META).read_text())["history"]
    return history


def load_training_state(directory: Path, state: TrainingState) -> TrainingState:
    """Restore `state` (built fresh from the same config) in place and return it."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / STATE_META).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{directory / STATE_META}: unreadable training state ({err})"
        ) from None
    tensors = _verified_tensors(directory / STATE_TENSORS, meta["sha256"])
    payload = {k: _decode(v, tensors) for k, v in meta["state"].items()}
    try:
        state.load_state_dict({**payload, "epoch": meta["epoch"], "history": meta["history"]})
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{directory}: the training state does not fit this config or "
            f"was written by another modresnet version "
            f"({one_line(err)}); start a new run"
        ) from None
    return state
