"""One typed config for a run: data, augmentation, model, optimizer, schedule, training.

Configs are plain kw-only dataclasses validated in `__post_init__`; `from_dict` is the one
door from YAML and CLI flags and rejects unknown keys and bad values with a `ConfigError`
naming the field. Presets are functions of nothing that return a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from modresnet.fields import ConfigError as ConfigError  # the config's error, by its name
from modresnet.fields import check_choices, check_range, coerce, plain, type_hints

# The choices of the config, as types: validation, YAML coercion and the CLI's help read them.
Flavor = Literal["paper", "debug"]
OptimName = Literal["adam", "adamw", "sgd"]
ScheduleName = Literal["plateau", "onecycle", "cosine", "constant"]  # plateau: on val loss
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LrScaling = Literal["linear", "sqrt", "none"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture knobs; `flavor` names a preset, explicit widths/blocks override it."""

    widths: tuple[int, ...] = (64, 128, 256)
    blocks: tuple[int, ...] = (2, 2, 2)
    num_classes: int = 10

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"model.widths: need positive channel counts, got {list(self.widths)}")
        if len(self.blocks) != len(self.widths) or any(b < 1 for b in self.blocks):
            raise ValueError(
                f"model.blocks: need one positive block count per stage "
                f"({len(self.widths)} stages), got {list(self.blocks)}"
            )
        if self.num_classes < 2:
            raise ValueError(f"model.num_classes: need at least 2, got {self.num_classes}")


FLAVORS: dict[Flavor, ModelConfig] = {
    "paper": ModelConfig(),
    # Same topology, 1/8 the width: ~44k parameters, for fast CPU tests.
    "debug": ModelConfig(widths=(8, 16, 32)),
}


@dataclass(kw_only=True)
class DataConfig:
    data_dir: str | None = None  # None: MODRESNET_DATA, else ~/.cache/modresnet
    val_size: int = 5000  # held out of the 50,000 training images, stratified
    split_seed: int = 0
    subset: int | None = None  # stratified number of training images for quick runs
    val_subset: int | None = None  # None: full validation split, or subset/9 with --subset
    test_subset: int | None = None  # None: the full 10,000-image test set
    download: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if not 10 <= self.val_size <= 25000:
            raise ValueError(f"data.val_size: must be between 10 and 25000, got {self.val_size}")
        for name in ("subset", "val_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 10:
                raise ValueError(
                    f"data.{name}: need at least 10 images (one per class), got {value}"
                )
        if self.subset is not None and self.subset > 50000 - self.val_size:
            raise ValueError(
                f"data.subset: at most {50000 - self.val_size} training images "
                f"exist, got {self.subset}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"data.std: must be positive, got {list(self.std)}")


@dataclass(kw_only=True)
class AugmentConfig:
    """Random per-sample augmentation; every knob at 0 turns its family off."""

    crop_padding: int = 0  # pixels of zero padding before a random 32x32 crop
    flip: float = 0.0  # probability of a horizontal flip
    brightness: float = 0.0  # factor drawn from [1-b, 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # shift drawn from [-h, h] of a full hue turn, h <= 0.5
    rotation: float = 0.0  # degrees, drawn from [-r, r]
    translate: float = 0.0  # fraction of the image side, drawn from [-t, t] per axis
    cutout: int = 0  # side in pixels of one zeroed square

    def __post_init__(self) -> None:
        check_range("augment.crop_padding", self.crop_padding, 0, 16)
        check_range("augment.flip", self.flip, 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            check_range(f"augment.{name}", getattr(self, name), 0.0, 1.0)
        check_range("augment.hue", self.hue, 0.0, 0.5)
        check_range("augment.rotation", self.rotation, 0.0, 180.0)
        check_range("augment.translate", self.translate, 0.0, 0.5)
        check_range("augment.cutout", self.cutout, 0, 32)


@dataclass(kw_only=True)
class OptimConfig:
    name: OptimName = "adam"
    lr: float = 1e-3  # peak learning rate at the reference batch (train.batch_size x 1 worker)
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only
    norm_bias_decay: bool = True  # false: no weight decay on BatchNorm weights and biases

    def __post_init__(self) -> None:
        check_choices(self, "optim")
        check_range("optim.lr", self.lr, 1e-8, 10.0)
        check_range("optim.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("optim.momentum", self.momentum, 0.0, 0.999)
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov: needs optim.name 'sgd' and a non-zero optim.momentum")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas: need two values in [0, 1), got {list(self.betas)}")


@dataclass(kw_only=True)
class ScheduleConfig:
    name: ScheduleName = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 5  # epochs without validation-loss improvement
    warmup_fraction: float = 0.25  # onecycle: share of steps spent rising to the peak
    final_lr_fraction: float = 0.01  # onecycle/cosine: last lr as a share of the peak

    def __post_init__(self) -> None:
        check_choices(self, "schedule")
        check_range("schedule.plateau_factor", self.plateau_factor, 1e-4, 0.99)
        check_range("schedule.plateau_patience", self.plateau_patience, 0, 1000)
        check_range("schedule.warmup_fraction", self.warmup_fraction, 0.01, 0.99)
        check_range("schedule.final_lr_fraction", self.final_lr_fraction, 0.0, 1.0)


@dataclass(kw_only=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 128  # per worker
    eval_batch_size: int = 1000  # large: evaluation is cheap per image, kernel launches are not
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0: off; else the per-step decay of an EMA of the weights (warmed up)
    ema_bn_images: int = 2048  # training images the EMA's BatchNorm statistics are recomputed on
    tta: bool = False  # evaluate on the image and its mirror
    seed: int = 0
    device: Device = "auto"
    channels_last: bool = True  # faster on CUDA and on this CPU (oneDNN), both measured
    precision: Precision = "auto"  # auto: bf16 on CC >= 8.0 GPUs, fp16 on older, fp32 on CPU
    compile: bool = False  # torch.compile the training forward (minutes to compile on a CPU)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    lr_scaling: LrScaling = "linear"  # how optim.lr grows with data-parallel workers

    def __post_init__(self) -> None:
        check_range("train.epochs", self.epochs, 1, 10000)
        check_range("train.batch_size", self.batch_size, 1, 65536)
        check_range("train.eval_batch_size", self.eval_batch_size, 1, 65536)
        check_range("train.label_smoothing", self.label_smoothing, 0.0, 0.99)
        check_range("train.ema_decay", self.ema_decay, 0.0, 0.99999)
        check_range("train.ema_bn_images", self.ema_bn_images, 1, 1_000_000)
        check_range("train.threads", self.threads, 0, 1024)
        check_choices(self, "train")


@dataclass(kw_only=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = plain(dataclasses.asdict(self))
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """Apply dotted-key overrides ("optim.lr": 0.1) and re-validate everything."""
        merged = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if not name or section not in merged:
                raise ConfigError(
                    f"{key}: unknown key; use SECTION.FIELD with a section of {list(merged)}"
                )
            if section == "model" and name == "flavor":
                merged["model"] = {"flavor": value, "num_classes": merged["model"]["num_classes"]}
                continue
            merged[section][name] = value
        return from_dict(merged)


def field_hint(path: str) -> Any:
    """The type of the config field SECTION.FIELD (`model.flavor`: the flavor names)."""
    section, _, name = path.partition(".")
    if path == "model.flavor":
        return Flavor
    return type_hints(type_hints(Config)[section])[name]


def _build(path: str, cls: type, values: dict[str, Any]) -> Any:
    values = dict(values)
    if cls is TrainConfig and "bf16" in values and "precision" not in values:
        # Runs saved before train.precision existed said bf16: true/false.
        values["precision"] = "auto" if values.pop("bf16") is not False else "fp32"
    if cls is ModelConfig and "flavor" in values:
        flavor = coerce(f"{path}.flavor", values.pop("flavor"), Flavor)
        base = plain(dataclasses.asdict(FLAVORS[flavor]))
        values = {**base, **values}
    hints = type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}.{key}: unknown key; {path} has {', '.join(known)}")
        kwargs[key] = coerce(f"{path}.{key}", value, hints[key], _build)
    try:
        return cls(**kwargs)
    except ValueError as err:
        message = str(err)
        if not message.startswith(path.split(".")[-1] + "."):
            message = f"{path}: {message}"
        raise ConfigError(message) from None


def from_dict(values: dict[str, Any]) -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(values).__name__}")
    hints = type_hints(Config)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{key}: unknown section; a config has {', '.join(hints)}")
        kwargs[key] = coerce(key, value or {}, hints[key], _build)
    return Config(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML ({err})") from None
    return values or {}


def paper() -> Config:
    """The paper's recipe exactly: heavy augmentation, Adam, plateau on validation loss."""
    return Config(
        augment=AugmentConfig(
            crop_padding=4,
            flip=0.5,
            brightness=0.3,
            contrast=0.3,
            saturation=0.3,
            hue=0.1,
            rotation=20.0,
            translate=0.1,
        ),
        optim=OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4),
        schedule=ScheduleConfig(name="plateau", plateau_factor=0.1, plateau_patience=5),
        train=TrainConfig(epochs=50, batch_size=128),
    )


def fast() -> Config:
    """A modern recipe for the same model (anchors.md: Page's ResNet-9, airbench): SGD
    Nesterov with a one-cycle schedule, label smoothing, flip + crop + cutout, no weight decay
    on BatchNorm and biases, a warmed-up EMA with recomputed BatchNorm statistics, flip TTA."""
    return Config(
        augment=AugmentConfig(crop_padding=4, flip=0.5, cutout=8),
        optim=OptimConfig(
            name="sgd",
            lr=0.2,
            weight_decay=5e-4,
            momentum=0.9,
            nesterov=True,
            norm_bias_decay=False,
        ),
        schedule=ScheduleConfig(name="onecycle", warmup_fraction=0.2, final_lr_fraction=0.0),
        train=TrainConfig(
            epochs=30, batch_size=256, label_smoothing=0.2, ema_decay=0.999, tta=True
        ),
    )


def fast15() -> Config:
    """`fast` in 15 epochs: no cutout (it costs accuracy on short runs, Page measured) and a
    shorter EMA horizon for the halved number of steps."""
    base = fast()
    return dataclasses.replace(
        base,
        augment=AugmentConfig(crop_padding=4, flip=0.5),
        schedule=dataclasses.replace(base.schedule, warmup_fraction=0.25),
        train=dataclasses.replace(base.train, epochs=15, ema_decay=0.998),
    )


def demo() -> Config:
    """`make demo`'s run, sized to a few minutes on 2 CPU cores: the `fast` recipe on the
    `debug` flavor (same topology, 1/8 width, ~44k parameters) over 12,000 stratified training
    images for 5 epochs, tested on the full 10,000-image test set. EMA and TTA are off, so the
    test accuracy is what `modresnet evaluate` and the served model give. The paper's model
    and recipe are the `paper` preset."""
    base = fast()
    return dataclasses.replace(
        base,
        model=FLAVORS["debug"],
        augment=AugmentConfig(crop_padding=4, flip=0.5),  # no cutout on a short run
        data=DataConfig(subset=12000, val_subset=1000),
        train=dataclasses.replace(base.train, epochs=5, batch_size=32, ema_decay=0.0, tta=False),
    )


def debug() -> Config:
    """The `debug` model flavor on 500 images for one epoch: seconds, for tests."""
    base = paper()
    return dataclasses.replace(
        base,
        model=FLAVORS["debug"],
        data=DataConfig(subset=500, val_subset=200, test_subset=200),
        train=dataclasses.replace(base.train, epochs=1, batch_size=64),
    )


PRESETS = {"paper": paper, "fast": fast, "fast15": fast15, "demo": demo, "debug": debug}


def resolve(
    preset: str = "paper",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Preset, then YAML file, then flag overrides: the order a user expects."""
    if preset not in PRESETS:
        raise ConfigError(f"preset: must be one of {', '.join(PRESETS)}; got {preset!r}")
    config = PRESETS[preset]()
    if config_file is not None:
        file_values = load_yaml(config_file)
        if not isinstance(file_values, dict):
            raise ConfigError(f"config file {config_file}: expected a mapping of sections")
        flat = {}
        for section, fields in file_values.items():
            if not isinstance(fields, dict):
                raise ConfigError(f"{section}: expected a mapping of fields, got {fields!r}")
            for name, value in fields.items():
                flat[f"{section}.{name}"] = value
        config = config.with_overrides(flat)
    if overrides:
        config = config.with_overrides(overrides)
    return config
