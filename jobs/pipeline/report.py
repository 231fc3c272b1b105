"""What `pipeline status` and `pipeline list` print: the stages as a table, then the figures
that matter, each named for the data it was measured on (validation for the search, test for
the retrain and the gate)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.table import Table

from jobs.pipeline.state import PipelineState, StageState

STYLE = {
    "done": "green",
    "running": "cyan",
    "skipped": "dim",
    "stopped": "yellow",
    "failed": "red",
    "interrupted": "yellow",
}


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(stage: StageState) -> str:
    seconds = stage.duration
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def stage_output(stage: StageState) -> str:
    """A stage's output in a few words."""
    out = stage.output
    if stage.status in ("stopped", "failed", "interrupted", "skipped") and stage.reason:
        return stage.reason
    if not out or stage.status != "done":
        return ""
    if stage.name == "search":
        return (
            f"{out['experiment']}: {out['trials']} trials, best {out['best_trial']} "
            f"(validation {_pct(out['best_val_acc'])})"
        )
    if stage.name == "retrain":
        return f"{out['run']} ({out['epochs']} epochs, sha256 {out['sha256'][:12]})"
    if stage.name == "evaluate":
        return (
            f"test {_pct(out['test_acc'])} on {out['test_n']:,} images (md5 {out['test_md5'][:8]})"
        )
    if stage.name == "register":
        return f"{out['label']}"
    if stage.name == "gate":
        if out.get("champion") is None:
            return "no champion yet: passes"
        return (
            f"test {_pct(out['candidate_test_acc'])} vs champion {out['champion']} "
            f"{_pct(out['champion_test_acc'])} (tolerance {100 * out['tolerance']:.1f} points)"
        )
    if stage.name == "promote":
        return f"{out['how']}: {out['outcome']}, champion {out['champion']}"
    return ""


def stages_table(state: PipelineState) -> Table:
    s = state.settings
    table = Table(
        title=f"pipeline {s.name}: {state.status}" + (f" ({state.reason})" if state.reason else ""),
        title_justify="left",
    )
    for column in ("stage", "status", "start", "duration", "output"):
        table.add_column(column, no_wrap=column != "output")
    for stage in state.stages:
        style = STYLE.get(stage.status, "")
        table.add_row(
            stage.name,
            f"[{style}]{stage.status}[/]" if style else stage.status,
            _when(stage.started),
            _duration(stage),
            stage_output(stage),
        )
    return table


def figures(state: PipelineState) -> list[str]:
    """The selection, end to end, with validation and test figures named as such."""
    search, test = state.output("search"), state.output("evaluate")
    gate, new = state.output("gate"), state.output("register")
    promote = state.stage("promote")
    lines = []
    if search:
        lines.append(
            f"best trial:   {search.get('best_trial', '-')}, validation accuracy "
            f"{_pct(search.get('best_val_acc'))} (the search selects on validation)"
        )
    if new:
        lines.append(f"new version:  {new['label']}")
    if test:
        line = f"test accuracy: {_pct(test['test_acc'])} on {test['test_n']:,} test images"
        if gate.get("champion"):
            line += (
                f", champion {gate['champion']} {_pct(gate['champion_test_acc'])} (same test set)"
            )
        lines.append(line + " (evaluated once, after the retrain)")
    if promote.status != "pending":
        detail = promote.output.get("outcome") or promote.reason or promote.status
        lines.append(f"promotion:    {state.settings.promote}: {detail}")
    return lines


def list_table(rows: list[tuple[str, PipelineState | None, str]]) -> Table:
    table = Table(title="pipelines", title_justify="left")
    for column in ("name", "status", "stage", "updated", "version", "test acc"):
        table.add_column(column, no_wrap=True)
    for name, state, problem in rows:
        if state is None:
            table.add_row(name, "[red]unreadable[/]", problem, "", "", "")
            continue
        current = state.next_stage()
        table.add_row(
            name,
            state.status,
            current.name if current is not None else "-",
            _when(state.updated),
            state.output("register").get("label", "-"),
            _pct(state.output("evaluate").get("test_acc")),
        )
    return table
