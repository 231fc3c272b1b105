"""Typed config: presets, YAML, overrides, and errors that name the field."""

from pathlib import Path

import pytest

from modresnet import config as configs
from modresnet.config import ConfigError, choices

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"


def test_paper_preset_is_the_papers_recipe():
    c = configs.resolve("paper")
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == ("adam", 1e-3, 1e-4)
    s = c.schedule
    assert (s.name, s.plateau_factor, s.plateau_patience) == ("plateau", 0.1, 5)
    assert (c.train.epochs, c.train.batch_size) == (50, 128)
    a = c.augment
    assert (a.crop_padding, a.flip, a.brightness) == (4, 0.5, 0.3)
    assert (a.contrast, a.saturation, a.hue) == (0.3, 0.3, 0.1)
    assert (a.rotation, a.translate) == (20.0, 0.1)
    assert c.data.mean == c.data.std == (0.5, 0.5, 0.5)


def test_fast_preset_is_a_modern_recipe():
    c = configs.resolve("fast")
    assert c.optim.name == "sgd" and c.optim.nesterov
    assert c.schedule.name == "onecycle"
    assert c.train.label_smoothing > 0 and c.train.ema_decay > 0 and c.train.tta_views == 2


def test_yaml_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.05\n  name: sgd\ntrain:\n  epochs: 3\n")
    c = configs.resolve("paper", f, {"train.epochs": 7})
    assert (c.optim.lr, c.optim.name, c.train.epochs) == (0.05, "sgd", 7)


def test_round_trip_through_yaml(tmp_path):
    c = configs.resolve("fast", overrides={"model.flavor": "debug"})
    f = tmp_path / "c.yaml"
    f.write_text(c.to_yaml())
    assert configs.from_dict(configs.load_yaml(f)) == c


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim.lrr": 1}, "optim.lrr: unknown key; optim has name, lr, weight_decay,"),
        ({"optim.lr": -1.0}, "optim.lr: must be between 1e-08 and 10.0, got -1.0"),
        ({"optim.name": "rmsprop"}, "optim.name: must be one of adam, adamw, sgd; got 'rmsprop'"),
        ({"train.epochs": "many"}, "train.epochs: expected an integer, got 'many'"),
        ({"train.epochs": 2.5}, "train.epochs: expected an integer, got 2.5"),
        ({"train.tta": 1}, "train.tta: expected true or false, got 1"),
        ({"augment.hue": 0.9}, "augment.hue: must be between 0.0 and 0.5, got 0.9"),
        ({"model.flavor": "huge"}, "model.flavor: must be one of paper, debug; got 'huge'"),
        ({"model.widths": ["8"]}, r"model.widths\[0\]: expected an integer, got '8'"),
        ({"model.num_classes": 1}, "model.num_classes: must be at least 2, got 1"),
        ({"trainer.epochs": 1}, "trainer.epochs: unknown key"),
        ({"optim.nesterov": True}, "optim.nesterov: needs optim.name 'sgd'"),
        ({"optim.betas": [0.9]}, r"optim.betas: expected 2 values, got \[0.9\]"),
        ({"data.subset": 5}, "data.subset: must be at least 10, got 5"),
        ({"data.subset": 49000}, "data.subset: at most 45000 training images exist"),
        ({"data.data_dir": 3}, "data.data_dir: expected a string, got 3"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=f"^{message}") as caught:
        configs.resolve("paper", overrides=overrides)
    assert "\n" not in str(caught.value)


def test_whole_floats_fill_int_fields():
    """YAML and Optuna's stepped draws write 8.0; an int field takes it as 8."""
    cfg = configs.resolve("paper", overrides={"augment.cutout": 8.0, "train.epochs": 3.0})
    assert (cfg.augment.cutout, cfg.train.epochs) == (8, 3)
    assert isinstance(cfg.augment.cutout, int)


def test_sections_declare_their_bounds_and_choices_as_a_schema():
    schema = configs.Config.model_json_schema()["$defs"]
    lr = schema["OptimConfig"]["properties"]["lr"]
    assert (lr["minimum"], lr["maximum"]) == (1e-8, 10.0)
    assert schema["TrainConfig"]["properties"]["device"]["enum"] == ["auto", "cpu", "cuda"]
    assert all(s["additionalProperties"] is False for s in schema.values())


def test_replace_validates_the_copy():
    cfg = configs.resolve("debug")
    assert cfg.train.replace(epochs=3).epochs == 3 and cfg.train.epochs == 1
    with pytest.raises(ConfigError, match="^train.epochs: must be between 1 and 10000, got 0"):
        cfg.train.replace(epochs=0)
    with pytest.raises(ConfigError, match="^model.blocks: need one positive block count"):
        cfg.replace(model=cfg.model.replace(widths=(8, 16)))


def test_a_run_config_and_model_json_as_written_before_still_load():
    """tests/fixtures/legacy/config.yaml is the `demo` preset as the dataclass config wrote
    it (a run's config.yaml, and best/model.json's "config")."""
    legacy = configs.load_yaml(LEGACY / "config.yaml")
    cfg = configs.from_dict(legacy)
    assert cfg == configs.resolve("demo")
    now = cfg.to_dict()
    assert now["train"]["tta_views"] == 1 and legacy["train"].pop("tta") is False
    assert all(now[s][k] == v for s, fields in legacy.items() for k, v in fields.items())
    assert cfg.model == configs.FLAVORS["debug"] and cfg.data.subset == 12000


def test_unknown_section_and_bad_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="optimizer"):
        configs.resolve("paper", f)
    f.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        configs.resolve("paper", f)
    with pytest.raises(ConfigError, match="not found"):
        configs.resolve("paper", tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="preset"):
        configs.resolve("nope")


def test_choices_are_literal_types_checked_however_a_config_is_built():
    assert choices(configs.field_hint("optim.name")) == ("adam", "adamw", "sgd")
    assert choices(configs.field_hint("model.flavor")) == tuple(configs.FLAVORS)
    assert choices(configs.field_hint("train.epochs")) is None
    with pytest.raises(ConfigError, match="^train.device: must be one of auto, cpu, cuda"):
        configs.TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="^model.widths: need positive channel counts"):
        configs.ModelConfig(widths=())
    with pytest.raises(ConfigError, match="schedule.name: must be one of plateau, onecycle"):
        configs.from_dict({"schedule": {"name": 3}})
