"""The registry's pure rules: model references, the gate, the rollback stack over the alias
history, the config hash; and one line for a registry that is not there."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from helpers.ports import free_port

from modresnet.errors import UserError
from modresnet.registry import GateError, ModelRef, RegistryError, is_ref, parse_ref
from modresnet.registry.gate import check
from modresnet.registry.lineage import config_hash
from modresnet.registry.refs import model_name, parse_spec
from modresnet.registry.store import _rollback_target, open_registry


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("models:/cifar@champion", ModelRef("cifar", alias="champion")),
        ("models:/cifar@candidate", ModelRef("cifar", alias="candidate")),
        ("models:/cifar/12", ModelRef("cifar", version="12")),
        ("models:/cifar", ModelRef("cifar", alias="champion")),
        ("models:/my.model_v-2@ab_c-1", ModelRef("my.model_v-2", alias="ab_c-1")),
    ],
)
def test_parse_ref_accepts_the_three_forms(text, ref):
    assert is_ref(text) and parse_ref(text) == ref
    assert parse_ref(str(ref)) == ref  # a ref prints as it parses


@pytest.mark.parametrize(
    "text",
    [
        "models:/",
        "models:/cifar/",
        "models:/cifar/0",
        "models:/cifar/1.5",
        "models:/cifar@",
        "models:/cifar@Champion",
        "models:/cifar/1@champion",
        "models:/../etc@champion",
        "models:/a/b/c",
        "models:/x' OR name LIKE '%",
        "models:/" + "a" * 129,
        "models:/cifar@" + "a" * 65,
        "runs:/abc/model",
        "/tmp/run",
    ],
)
def test_parse_ref_refuses_anything_else_in_one_line(text):
    with pytest.raises(RegistryError) as err:
        parse_ref(text)
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert "models:/NAME@ALIAS" in message or "not a model reference" in message


def test_is_ref_only_for_the_prefix():
    assert not is_ref("/runs/models:/x") and not is_ref("s3://b/models") and not is_ref(None)


def test_parse_spec_takes_the_prefix_or_not():
    assert parse_spec("cifar/3") == parse_ref("models:/cifar/3") == ModelRef("cifar", "3")


def test_hostile_model_names_never_reach_a_filter_string():
    for name in ("x' OR '1'='1", "a b", "", "..", "a/b", "é"):
        with pytest.raises(RegistryError, match="not a valid name"):
            model_name(name)


@dataclass(frozen=True)
class Scored:
    label: str
    test_acc: float | None
    test_md5: str | None = "m" * 32


def test_gate_passes_without_a_champion_and_within_the_tolerance():
    check(Scored("m/2", 0.5), None)
    check(Scored("m/2", 0.80), Scored("m/1", 0.80))
    check(Scored("m/2", 0.796), Scored("m/1", 0.80), tolerance=0.005)


def test_gate_refusal_names_both_figures_and_the_tolerance():
    with pytest.raises(GateError) as err:
        check(Scored("m/2", 0.79), Scored("m/1", 0.80), tolerance=0.005)
    message = str(err.value)
    assert "79.00%" in message and "80.00%" in message and "0.50 points" in message
    assert "m/2" in message and "m/1" in message and "\n" not in message


def test_gate_refuses_another_test_set():
    with pytest.raises(GateError, match=r"another test set \(md5 a+ vs b+"):
        check(Scored("m/2", 0.99, "a" * 32), Scored("m/1", 0.5, "b" * 32))


def test_gate_refuses_a_version_without_a_test_result_and_a_bad_tolerance():
    with pytest.raises(GateError, match="records no test accuracy"):
        check(Scored("m/2", None), None)
    with pytest.raises(GateError, match="--tolerance"):
        check(Scored("m/2", 0.5), None, tolerance=-0.1)


def _move(version, previous, rollback=False):
    entry = {"alias": "champion", "version": version, "previous": previous, "at": 0.0}
    return entry | ({"rollback": True} if rollback else {})


def test_rollback_walks_back_one_champion_at_a_time():
    history = [_move("1", None), _move("2", "1"), _move("3", "2")]
    assert _rollback_target(history, "3") == "2"
    history.append(_move("2", "3", rollback=True))
    assert _rollback_target(history, "2") == "1"
    history.append(_move("1", "2", rollback=True))
    assert _rollback_target(history, "1") is None


def test_rollback_ignores_other_aliases_and_starts_from_a_trimmed_history():
    history = [
        {"alias": "candidate", "version": "9", "previous": None, "at": 0.0},
        _move("5", "4"),  # the moves before were dropped from the bounded history
    ]
    assert _rollback_target(history, "5") == "4"
    assert _rollback_target([_move("1", None)], "1") is None


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": {"c": [1, 2]}}) == config_hash({"b": {"c": [1, 2]}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_an_unreachable_server_is_one_line(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError) as err:
        open_registry(uri, tmp_path).names()
    message = str(err.value)
    assert message.startswith(f"cannot reach the MLflow registry at {uri} (")
    assert message.endswith("start it or fix --registry / MLFLOW_TRACKING_URI")
    assert "\n" not in message
