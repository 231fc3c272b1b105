"""Typed config: presets, YAML, overrides, and errors that name the field."""

import pytest

from modresnet import config as configs
from modresnet.config import ConfigError
from modresnet.fields import choices


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
    assert c.train.label_smoothing > 0 and c.train.ema_decay > 0 and c.train.tta


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
        ({"optim.lrr": 1}, "optim.lrr: unknown key"),
        ({"optim.lr": -1}, "optim.lr: must be between"),
        ({"optim.name": "rmsprop"}, "optim.name: must be one of"),
        ({"train.epochs": "many"}, "train.epochs: expected an integer"),
        ({"augment.hue": 0.9}, "augment.hue"),
        ({"model.flavor": "huge"}, "model.flavor"),
        ({"trainer.epochs": 1}, "trainer.epochs: unknown key"),
        ({"optim.nesterov": True}, "optim.nesterov"),
        ({"data.subset": 5}, "data.subset"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        configs.resolve("paper", overrides=overrides)


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
    with pytest.raises(ValueError, match="train.device: must be one of auto, cpu, cuda"):
        configs.TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="schedule.name: must be one of plateau, onecycle"):
        configs.from_dict({"schedule": {"name": 3}})
