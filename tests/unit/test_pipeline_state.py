"""pipeline.json and the run/resume logic of `modresnet pipeline` without Ray: the state
written whole and read back, one run of a pipeline at a time, a rerun that continues at the
first unfinished stage (and at an earlier one when a finished stage lost its outputs), a rerun
with other settings refused, and `pipeline status|list` naming validation and test figures.
The stages themselves (search, retrain, ...) run for real in tests/e2e/test_pipeline.py; here
they are small functions that record their calls."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.pipeline import driver, stages
from jobs.pipeline.command import pipeline_app
from jobs.pipeline.settings import PipelineSettings, RetrainSettings
from jobs.pipeline.state import STAGES, STATE_FILE, PipelineBusyError, PipelineState, Store
from jobs.tune.job import SearchSettings
from jobs.tune.space import DEFAULT_SPACE, load_space
from modresnet import config as configs
from serve.canary.settings import CanarySettings

REPO = Path(__file__).resolve().parents[2]


def settings(storage: Path, name: str = "p1", **changes) -> PipelineSettings:
    base = configs.resolve("debug", None, {"train.epochs": 2})
    space = load_space(DEFAULT_SPACE, base)
    values = dict(
        name=name,
        storage=str(storage),
        model="cifar",
        promote="direct",
        tolerance=0.005,
        base=base,
        space=space.raw,
        space_source=space.source,
        search=SearchSettings(samples=2, max_epochs=1),
        retrain=RetrainSettings(),
        canary=CanarySettings(),
    )
    return PipelineSettings(**{**values, **changes})


@pytest.fixture
def calls(monkeypatch):
    """Each stage a function that records its call and returns an output naming it."""
    seen: list[str] = []

    def make(name):
        def run(ctx):
            seen.append(name)
            return {"by": name, "attempt": ctx.state.stage(name).attempt}

        return run

    monkeypatch.setattr(stages, "RUN", {name: make(name) for name in STAGES})
    monkeypatch.setattr(stages, "VERIFY", {})
    return seen


def test_state_round_trips_through_the_file_and_the_file_is_whole_json(tmp_path):
    store = Store(tmp_path, "p1")
    state = PipelineState.new(settings(tmp_path))
    state.start("search")
    state.end("search", "done", {"best_trial": "t1"})
    store.write(state)
    path = tmp_path / "p1" / STATE_FILE
    assert json.loads(path.read_text())["stages"][0]["status"] == "done"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    back = store.read()
    assert back == state
    assert back.next_stage().name == "retrain"
    assert back.settings.base == state.settings.base  # the config survives JSON


def test_a_torn_state_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / STATE_FILE).write_text('{"format": 1, "stat')
    runner = CliRunner()
    result = runner.invoke(pipeline_app, ["status", "p1", "--storage", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "not a readable pipeline state" in result.output
    assert STATE_FILE in result.output and "Traceback" not in result.output


def test_a_run_goes_through_every_stage_and_a_rerun_repeats_none(tmp_path, calls):
    state = driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    assert calls == list(STAGES)
    assert state.status == "finished"
    assert all(s.status == "done" and s.started <= s.ended for s in state.stages)
    again = driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    assert calls == list(STAGES) and again.status == "finished" and again.runs == 2


def test_promote_none_is_skipped_not_run(tmp_path, calls):
    state = driver.run_pipeline(settings(tmp_path, promote="none"), info=lambda line: None)
    assert calls == list(STAGES[:-1])
    assert state.stage("promote").status == "skipped" and state.status == "finished"


def test_a_failed_stage_is_saved_and_the_rerun_continues_there(tmp_path, calls, monkeypatch):
    def broken(ctx):
        calls.append("retrain")
        raise RuntimeError("node lost")

    working = stages.RUN["retrain"]
    monkeypatch.setitem(stages.RUN, "retrain", broken)
    with pytest.raises(RuntimeError):
        driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    saved = Store(tmp_path, "p1").read()
    assert saved.status == "failed" and saved.reason == "retrain: RuntimeError: node lost"
    assert saved.stage("search").status == "done"
    assert saved.stage("retrain").status == "failed" and saved.stage("retrain").ended

    monkeypatch.setitem(stages.RUN, "retrain", working)
    calls.clear()
    state = driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    assert calls == list(STAGES[1:])  # the search is not repeated
    assert state.stage("retrain").output == {"by": "retrain", "attempt": 2}
    assert state.status == "finished"


def test_a_stop_ends_the_run_with_its_reason_and_a_rerun_tries_that_stage_again(
    tmp_path, calls, monkeypatch
):
    def refuse(ctx):
        calls.append("gate")
        raise stages.Stop("test accuracy 40.00% is below the champion's 60.00%")

    monkeypatch.setitem(stages.RUN, "gate", refuse)
    state = driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    assert state.status == "stopped"
    assert state.reason == "gate: test accuracy 40.00% is below the champion's 60.00%"
    assert state.stage("promote").status == "pending"
    assert calls == list(STAGES[:5])
    calls.clear()
    driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    assert calls == ["gate"]


def test_a_finished_stage_whose_output_is_gone_runs_again_with_every_later_one(
    tmp_path, calls, monkeypatch
):
    driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    gone = tmp_path / "gone"
    monkeypatch.setitem(
        stages.VERIFY, "retrain", lambda ctx, out: None if gone.exists() else "its run is gone"
    )
    calls.clear()
    lines: list[str] = []
    driver.run_pipeline(settings(tmp_path), info=lines.append)
    assert calls == list(STAGES[1:])
    assert "retrain: its run is gone; running it again" in lines


def test_the_search_output_is_verified_against_its_best_config(tmp_path):
    state = PipelineState.new(settings(tmp_path))
    store = Store(tmp_path, "p1")
    ctx = stages.Context(settings=state.settings, state=state, store=store)
    exp = store.local / "search"
    exp.mkdir(parents=True)
    (exp / "best_config.yaml").write_text("train: {epochs: 1}\n")
    out = {
        "experiment_name": "search",
        "experiment": str(exp),
        "best_config_sha256": stages.sha256_text("train: {epochs: 1}\n"),
    }
    assert stages.verify_search(ctx, out) is None
    (exp / "best_config.yaml").write_text("train: {epochs: 9}\n")
    assert "has changed" in stages.verify_search(ctx, out)
    (exp / "best_config.yaml").unlink()
    assert "is missing" in stages.verify_search(ctx, out)


def test_a_rerun_with_other_settings_is_refused_naming_the_setting(tmp_path, calls):
    driver.run_pipeline(settings(tmp_path), info=lambda line: None)
    changed = settings(tmp_path, search=SearchSettings(samples=3, max_epochs=1))
    with pytest.raises(driver.PipelineSetupError, match=r"search\.samples 3 \(saved: 2\)"):
        driver.run_pipeline(changed, info=lambda line: None)


def test_a_second_run_of_one_pipeline_at_once_is_refused(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from jobs.pipeline.state import Store
                with Store({str(tmp_path)!r}, "p1").lock():
                    print("held", flush=True)
                    sys.stdin.readline()
            """),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineBusyError, match="running in another process"):
            driver.run_pipeline(settings(tmp_path), info=lambda line: None)
        with Store(tmp_path, "p2").lock():  # another pipeline of the same storage runs
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with Store(tmp_path, "p1").lock():  # the holder is gone, and so is its lock
        pass


def _finished(tmp_path: Path) -> PipelineState:
    state = PipelineState.new(settings(tmp_path))
    outputs = {
        "search": {
            "experiment_name": "search",
            "experiment": str(tmp_path / "p1" / "search"),
            "trials": 4,
            "stopped_early": 2,
            "best_trial": "abc_00001",
            "best_val_acc": 0.5125,
            "metric": "val_acc",
            "best_metric": 0.5125,
            "best_config": {},
            "best_config_sha256": "0" * 64,
        },
        "retrain": {"run": str(tmp_path / "p1" / "retrain"), "epochs": 5, "sha256": "a" * 64},
        "evaluate": {"test_acc": 0.5432, "test_n": 1000, "test_md5": "b" * 32, "sha256": "a" * 64},
        "register": {"version": "2", "label": "cifar/2", "sha256": "a" * 64, "test_acc": 0.5432},
        "gate": {
            "candidate": "cifar/2",
            "candidate_test_acc": 0.5432,
            "champion": "cifar/1",
            "champion_test_acc": 0.5011,
            "test_md5": "b" * 32,
            "tolerance": 0.005,
        },
    }
    for name, out in outputs.items():
        state.start(name)
        state.end(name, "done", out)
    state.start("promote")
    state.end("promote", "stopped", {}, "the canary rolled back (5xx 12% vs 0%)")
    Store(tmp_path, "p1").write(state)
    return state


def test_status_shows_the_stages_and_names_validation_and_test_figures(tmp_path):
    _finished(tmp_path)
    result = CliRunner().invoke(
        pipeline_app, ["status", "p1", "--storage", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for stage in STAGES:
        assert stage in out
    assert "best trial:   abc_00001, validation accuracy 51.25%" in out
    assert "new version:  cifar/2" in out
    assert "test accuracy: 54.32% on 1,000 test images, champion cifar/1 50.11%" in out
    assert "the canary rolled back (5xx 12% vs 0%)" in out
    assert "pipeline p1: stopped" in out


def test_list_shows_every_pipeline_of_the_storage(tmp_path):
    _finished(tmp_path)
    Store(tmp_path, "p2").write(PipelineState.new(settings(tmp_path, name="p2")))
    (tmp_path / "not-a-pipeline").mkdir()
    result = CliRunner().invoke(
        pipeline_app, ["list", "--storage", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "p1" in line or "p2" in line]
    assert len(rows) == 2, result.output
    assert "stopped" in rows[0] and "cifar/2" in rows[0] and "54.32%" in rows[0]
    assert "running" in rows[1] and "search" in rows[1]
    assert "not-a-pipeline" not in result.output


def test_status_of_an_unknown_pipeline_is_one_line(tmp_path):
    result = CliRunner().invoke(pipeline_app, ["status", "nope", "--storage", str(tmp_path)])
    assert result.exit_code == 2
    assert "no pipeline nope in" in result.output and "pipeline list" in result.output
