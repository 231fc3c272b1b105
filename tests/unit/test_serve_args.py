"""Serve's settings are written once, in serve/args.py: serve/config.yaml is generated from them,
the `modresnet serve` flags take their help and defaults from them, and a bad value or an
unknown key is one error naming it. No Ray, no data set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.main import get_command
from typer.testing import CliRunner

from modresnet.cli import app
from serve.args import HealthArgs, HttpOptions, ServeArgs, config_yaml

REPO = Path(__file__).resolve().parents[2]


def test_config_yaml_is_generated_from_the_args():
    """`python -m serve.args > serve/config.yaml`: the committed file is what the models say,
    and every arg in it is at its default (the checkpoint: its example)."""
    text = (REPO / "serve" / "config.yaml").read_text()
    assert text == config_yaml(), "serve/config.yaml is stale: python -m serve.args > it"
    config = yaml.safe_load(text)
    assert config["http_options"] == HttpOptions().model_dump()
    model, health = config["applications"]
    assert model["import_path"] == "serve.app:build_app"
    assert model["args"] == ServeArgs(checkpoint="runs/demo").model_dump()
    assert health["import_path"] == "serve.app:build_health"
    assert health["args"] == HealthArgs().model_dump()
    assert health["route_prefix"] == "/v2/health" and model["route_prefix"] == "/"


def _serve_options() -> dict:
    command = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


@pytest.mark.parametrize(
    "param,model,field",
    [
        ("host", HttpOptions, "host"),
        ("port", HttpOptions, "port"),
        ("backend", ServeArgs, "backend"),
        ("threads", ServeArgs, "threads"),
        ("replica_cpus", ServeArgs, "replica_cpus"),
        ("max_queued_requests", ServeArgs, "max_queued_requests"),
        ("batch_wait_ms", ServeArgs, "batch_wait_timeout_s"),
        ("max_body_mb", ServeArgs, "max_body_bytes"),
    ],
)
def test_serve_flags_take_help_and_default_from_the_fields(param, model, field):
    """A flag left out is left to the model's default (the option itself defaults to None),
    and its help is the field's description naming that default."""
    option = _serve_options()[param]
    info = model.model_fields[field]
    assert option.default is None, (param, option.default)
    assert info.description and option.help.startswith(info.description), option.help
    scale = {"batch_wait_ms": 1e-3, "max_body_mb": 2**20}.get(param, 1)
    default = info.default / scale if scale != 1 else info.default
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    assert option.help.endswith(f"default {shown}"), option.help


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--threads", "0"], "--threads: must be between 1 and 64, got 0"),
        (["--backend", "tpu"], "--backend: must be one of onnx, torch, int8; got 'tpu'"),
        (["--batch-wait-ms", "20000"], "--batch-wait-ms: must be between 0 and 10, got 20.0"),
        (["--port", "0"], "--port: must be between 1 and 65535, got 0"),
        (["--min-replicas", "3"], "--max-replicas: max_replicas (2) is below min_replicas (3)"),
    ],
)
def test_a_bad_serve_flag_is_one_line_naming_it(random_checkpoint, flags, message):
    result = CliRunner().invoke(app, ["serve", str(random_checkpoint), *flags])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_unknown_args_are_named_with_a_hint_beside_the_other_errors():
    """`extra="forbid"` finds the unknown key, and the error says which arg it may have
    meant, without hiding the other errors of the same args."""
    with pytest.raises(ValidationError) as err:
        ServeArgs.model_validate({"checkpoint": "x", "max_replica": 3, "threads": 0})
    errors = {e["loc"]: e for e in err.value.errors()}
    assert set(errors) == {("max_replica",), ("threads",)}, errors
    assert "did you mean 'max_replicas'" in errors[("max_replica",)]["msg"]
    assert errors[("threads",)]["type"] == "greater_than_equal"
    with pytest.raises(ValidationError, match="below min_replicas"):
        ServeArgs.model_validate({"checkpoint": "x", "min_replicas": 3, "max_replicas": 2, "x": 1})
    with pytest.raises(ValidationError, match="extra"):
        HttpOptions.model_validate({"hots": "0.0.0.0"})
