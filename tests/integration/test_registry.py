"""The embedded registry (SQLite + an artifact folder under the storage root) over real small
runs: one trained, one flat (it answers one class, 10% on the stratified test set) and one
scored on another test set, each finished by the real `finalize`. Lineage, the refusal of
the same weights, aliases, the gate, rollback with its history, fetching with the sha256
checked, and the CLI's commands with `models:/` references."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modresnet import config as configs
from modresnet.checkpoint import load_model, save_model
from modresnet.data import TEST_FILES, load_cifar10
from modresnet.evaluation import finalize
from modresnet.local import train_local
from modresnet.registry import (
    GateError,
    ModelRef,
    RegistryError,
    open_registry,
    resolve_checkpoint,
)
from modresnet.registry import store as registry_store
from modresnet.registry.lineage import config_hash
from modresnet.rundir import RunDir

CLI = [sys.executable, "-m", "modresnet.cli"]
NAME = "cifar"
MLFLOW_CHATTER = ("INFO", "alembic", "Downloading artifacts", "View run", "Traceback")


def _derived(root: Path, name: str, cfg, loaded, mutate) -> Path:
    """A run directory holding `loaded`'s weights changed by `mutate`, scored by finalize."""
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        mutate(model)
    run = RunDir(root / name).create(cfg)
    save_model(run.best, model, cfg, loaded.classes, loaded.meta["epoch"], loaded.meta["metrics"])
    data = load_cifar10(cfg.data)
    finalize(run, data.test, data.classes, torch.device("cpu"))
    return run.path


def _flat(model) -> None:
    model.linear.weight.zero_()
    model.linear.bias.copy_(torch.arange(10, dtype=torch.float32))  # always "truck"


def _nudge(model) -> None:
    torch.manual_seed(1)
    for p in model.parameters():
        p.add_(1e-3 * torch.randn_like(p))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-runs")
    cfg = configs.resolve(
        "debug",
        overrides={
            "data.data_dir": str(data_dir),
            "data.subset": 1000,
            "optim.lr": 0.005,
            "train.epochs": 2,
        },
    )
    train_local(cfg, root / "good", info=lambda _: None)
    loaded = load_model(root / "good")
    other = cfg.with_overrides({"data.test_subset": 100})
    runs = {
        "good": root / "good",
        "flat": _derived(root, "flat", cfg, loaded, _flat),
        "other_test_set": _derived(root, "other", other, loaded, _nudge),
    }
    experiment = root / "search-1"
    shutil.copytree(runs["flat"], experiment / "best-run")
    (experiment / "summary.json").write_text(json.dumps({"best_trial": "abc_00003"}))
    runs["tune_export"] = experiment / "best-run"
    good, flat = (json.loads((runs[k] / "test.json").read_text()) for k in ("good", "flat"))
    assert flat["test_acc"] == pytest.approx(0.10) and good["test_acc"] >= 0.15, (good, flat)
    return runs


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A storage root and cache of the test's own; no MLFLOW_TRACKING_URI from outside."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MODRESNET_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MODRESNET_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _test_json(run: Path) -> dict:
    return json.loads((run / "test.json").read_text())


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, in its own process: what MLflow prints shows here."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def _in_process(*args: str) -> SimpleNamespace:
    """The same command in this process (seconds cheaper: no interpreter, torch or MLflow
    start), for the checks that need no fresh process."""
    from typer.testing import CliRunner

    from modresnet.cli import app

    done = CliRunner().invoke(app, list(args))
    return SimpleNamespace(returncode=done.exit_code, stdout=done.stdout, stderr=done.stderr)


def test_register_records_lineage_and_only_the_checkpoint(runs, home):
    reg = open_registry()
    v = reg.register(runs["good"], NAME)
    test = _test_json(runs["good"])
    meta = json.loads((runs["good"] / "best" / "model.json").read_text())
    assert (v.name, v.version, v.label) == (NAME, "1", f"{NAME}/1")
    assert v.sha256 == test["sha256"] == meta["sha256"]
    assert (v.test_acc, v.test_md5, v.test_n) == (test["test_acc"], test["test_md5"], test["n"])
    assert v.val_acc == test["val_acc"]
    assert v.lineage["run_uri"] == str(runs["good"].resolve())
    assert v.lineage["config"] == meta["config"]
    assert v.lineage["config_hash"] == config_hash(meta["config"])
    assert v.lineage["data_md5s"]["test_batch"] == TEST_FILES["test_batch"]
    assert v.lineage["code_version"].startswith("modresnet ")
    assert v.lineage["search"] is None and v.lineage["trial"] is None
    assert reg.get(f"models:/{NAME}/1") == v and reg.versions(NAME) == [v]
    assert reg.uri == f"sqlite:///{(home / 'runs' / 'registry' / 'mlflow.db').resolve()}"
    stored = [p for p in (home / "runs" / "registry" / "artifacts").rglob("*") if p.is_file()]
    assert sorted(p.name for p in stored) == ["model.json", "model.safetensors"]


def test_a_tune_export_records_its_search_and_trial(runs, home):
    v = open_registry().register(runs["tune_export"], NAME)
    assert v.lineage["search"] == str(runs["tune_export"].parent.resolve())
    assert v.lineage["trial"] == "abc_00003"


def test_a_run_without_its_test_result_is_refused(runs, home, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(runs["good"] / "best", bare)
    with pytest.raises(RegistryError, match="no test.json naming these weights"):
        open_registry().register(bare, NAME)


def test_aliases_gate_and_rollback_keep_the_history(runs, home):
    reg = open_registry()
    flat, good = reg.register(runs["flat"], NAME), reg.register(runs["good"], NAME)
    other = reg.register(runs["other_test_set"], NAME)
    reg.set_alias(NAME, flat.version, "champion", reason="first")
    assert reg.gate(NAME, good.version).label == flat.label  # better than the champion: passes
    reg.set_alias(NAME, good.version, "candidate")
    assert reg.get(f"models:/{NAME}@candidate").label == good.label
    reg.set_alias(NAME, good.version, "champion", reason="canary passed")

    with pytest.raises(GateError) as err:
        reg.set_alias(NAME, flat.version, "candidate")
    figures = (f"{100 * flat.test_acc:.2f}%", f"{100 * good.test_acc:.2f}%", "0.50 points")
    assert all(f in str(err.value) for f in figures), str(err.value)
    assert reg.set_alias(NAME, flat.version, "candidate", tolerance=0.5).aliases == ("candidate",)
    with pytest.raises(GateError, match="another test set"):
        reg.gate(NAME, other.version)

    reg.set_alias(NAME, other.version, "champion")  # no gate for champion: a deliberate move
    assert reg.rollback(NAME).label == good.label
    assert reg.rollback(NAME, reason="again").label == flat.label
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback(NAME)
    champion_moves = [
        (e["version"], e["previous"], e.get("rollback", False), e["reason"])
        for e in reg.history(NAME)
        if e["alias"] == "champion"
    ]
    assert champion_moves == [
        (flat.version, None, False, "first"),
        (good.version, flat.version, False, "canary passed"),
        (other.version, good.version, False, ""),
        (good.version, other.version, True, "manual rollback"),
        (flat.version, good.version, True, "again"),
    ]
    reg.delete_alias(NAME, "candidate", reason="canary rolled back")
    assert reg.history(NAME)[-1] | {"at": 0} == {
        "alias": "candidate",
        "version": None,
        "previous": flat.version,
        "at": 0,
        "reason": "canary rolled back",
    }
    with pytest.raises(RegistryError, match="has no @candidate"):
        reg.get(ModelRef(NAME, alias="candidate"))


def test_the_history_is_bounded(runs, home, monkeypatch):
    monkeypatch.setattr(registry_store, "HISTORY_KEPT", 3)
    reg = open_registry()
    a, b = reg.register(runs["flat"], NAME), reg.register(runs["good"], NAME)
    for i in range(5):
        reg.set_alias(NAME, (a, b)[i % 2].version, "champion", reason=f"move {i}")
    assert [e["reason"] for e in reg.history(NAME)] == ["move 2", "move 3", "move 4"]


def test_fetch_verifies_the_weights(runs, home):
    reg = open_registry()
    v = reg.register(runs["good"], NAME)
    reg.set_alias(NAME, v.version, "champion")
    folder, version = resolve_checkpoint(f"models:/{NAME}@champion")
    assert version == reg.get(ModelRef(NAME, version="1")) and folder.parent.name == "registry"
    assert load_model(folder).sha256 == v.sha256
    assert resolve_checkpoint(str(runs["good"])) == (runs["good"], None)

    (folder / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(RegistryError, match="changed or damaged"):
        reg.fetch(v)
    shutil.rmtree(folder)
    stored = next((home / "runs" / "registry" / "artifacts").rglob("model.safetensors"))
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    with pytest.raises(RegistryError, match="changed or damaged"):
        reg.fetch(v)


def test_unknown_names_versions_and_aliases_are_one_line(runs, home):
    reg = open_registry()
    for ref, message in (
        ("models:/nope@champion", "no registered model 'nope'"),
        (f"models:/{NAME}/7", f"model {NAME} has no version 7"),
        (f"models:/{NAME}@champion", f"model {NAME} has no @champion"),
    ):
        if "nope" not in ref and NAME not in reg.names():
            reg.register(runs["flat"], NAME)
        with pytest.raises(RegistryError, match=message):
            reg.get(ref)


def test_the_commands(runs, home):
    """register, list, show, alias, rollback and `evaluate models:/...`: JSON for scripts, one
    line for every refusal, no MLflow chatter (registering into a new database and fetching
    for evaluate run in their own processes, where MLflow's logs and bars would show)."""
    out = [_cli("models", "register", str(runs["flat"]), "--name", NAME)]
    out.append(_cli("models", "register", str(runs["good"]), "--name", NAME, "--json"))
    assert out[0].returncode == 0 and out[0].stdout.startswith(f"registered {NAME}/1:"), out[0]
    assert json.loads(out[1].stdout)["version"] == "2", out[1]
    again = _in_process("models", "register", str(runs["flat"]), "--name", NAME)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again
    assert f"already registered as {NAME}/1" in again.stderr
    out.append(_in_process("models", "alias", NAME, "1", "champion"))
    out.append(_in_process("models", "alias", NAME, "2", "champion", "--reason", "better"))
    assert out[-1].stdout.startswith(f"{NAME}@champion -> {NAME}/2"), out[-1]
    refused = _in_process("models", "alias", NAME, "1", "candidate")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused
    assert "is below champion cifar/2" in refused.stderr

    listed = _in_process("models", "list", "--json")
    assert [(v["label"], v["aliases"]) for v in json.loads(listed.stdout)] == [
        (f"{NAME}/2", ["champion"]),
        (f"{NAME}/1", []),
    ]
    shown = _in_process("models", "show", f"{NAME}@champion", "--json")
    assert json.loads(shown.stdout)["sha256"] == _test_json(runs["good"])["sha256"]
    table = _in_process("models", "show", NAME)
    assert table.returncode == 0 and "alias history" in table.stdout, table
    out.append(_in_process("models", "rollback", NAME))
    assert out[-1].stdout.strip().startswith(f"{NAME}@champion: {NAME}/2 -> {NAME}/1"), out[-1]
    history = json.loads(_in_process("models", "show", NAME, "--json").stdout)["history"]
    assert [(e["version"], e["reason"]) for e in history] == [
        ("1", ""),
        ("2", "better"),
        ("1", "manual rollback"),
    ]
    evaluated = _cli("evaluate", f"models:/{NAME}@champion", "--subset", "200")
    assert evaluated.returncode == 0, evaluated
    assert json.loads(evaluated.stdout)["test_md5"] == _test_json(runs["flat"])["test_md5"]
    for done in (*out, listed, shown, table, evaluated):
        assert not any(s in done.stdout + done.stderr for s in MLFLOW_CHATTER), done
    bad = _in_process("models", "show", "x' OR name LIKE '%")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
