"""Run a pipeline, or continue it: read pipeline.json (or start one), check that the command
asks for the same pipeline, verify what its finished stages left, then run each unfinished
stage in order (jobs/pipeline/stages.py), saving the state and notifying on every change.

One Ray connection serves every stage (`jobs.runtime.connect`): the drivers the stages call
find it connected and leave it so; an embedded Ray ends with the pipeline. Every W&B run of a
pipeline (its trials, its retrain) joins the W&B group `pipeline-NAME` in one project.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.pipeline import stages
from jobs.pipeline.notify import Notifier, message
from jobs.pipeline.settings import PipelineSettings, PipelineSetupError
from jobs.pipeline.state import STAGES, PipelineState, StageStatus, Store
from modresnet.errors import UserError, one_line

if TYPE_CHECKING:
    from rich.console import Console

WANDB_PROJECT = "modresnet"


@dataclass(frozen=True)
class RunOptions:
    """How this process runs the pipeline; unlike its settings, these may change on a rerun."""

    address: str | None = None
    notify: str | None = None
    wandb: bool = True
    verbose: bool = False


def check_same(saved: PipelineSettings, given: PipelineSettings) -> None:
    """Refuse a rerun that asks for another pipeline than the one saved: it would continue
    the saved stages with settings they were not built with."""
    changed = given.differences(saved)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise PipelineSetupError(
            f"pipeline {saved.name} was started with other settings: {changed[0]}{more}; "
            f"repeat its flags to continue it, or start a new pipeline under another NAME"
        )


def verify(ctx: stages.Context, info: Callable[[str], None]) -> None:
    """Trust a finished stage only while its outputs are there: the first one that lost them
    runs again, with every stage after it."""
    for stage in ctx.state.stages:
        if not stage.finished:
            return
        check = stages.VERIFY.get(stage.name)
        problem = check(ctx, stage.output) if check is not None and stage.status == "done" else None
        if problem:
            info(f"{stage.name}: {problem}; running it again")
            ctx.state.reset_from(stage.name, problem)
            return


def run_pipeline(
    settings: PipelineSettings,
    options: RunOptions = RunOptions(),
    info: Callable[[str], None] = print,
    console: Console | None = None,
) -> PipelineState:
    """Run or continue the pipeline `settings` names; returns its final state. A stop on
    purpose (the gate, a rollback) returns with status "stopped"; an error is saved as the
    stage's reason and raised; Ctrl-C saves "interrupted" and raises KeyboardInterrupt."""
    store = Store(settings.storage, settings.name)
    notifier = Notifier(options.notify, warn=info)
    with store.lock():
        state = store.read()
        if state is None:
            state = PipelineState.new(settings)
            info(f"pipeline {settings.name}: new, in {store.where}")
        else:
            check_same(state.settings, settings)
            info(f"pipeline {settings.name}: continuing ({store.state_uri})")
        state.runs += 1
        connection: list[str] = []

        def connect() -> None:
            if not connection:
                from jobs.runtime import connect as ray_connect

                connection.append(ray_connect(options.address, log_file=store.local / "ray.log"))

        ctx = stages.Context(
            settings=settings,
            state=state,
            store=store,
            address=options.address,
            wandb=options.wandb,
            verbose=options.verbose,
            info=info,
            console=console,
            connect=connect,
            save=lambda: store.write(state),
        )
        verify(ctx, info)
        group = os.environ.get("WANDB_RUN_GROUP") or f"pipeline-{settings.name}"
        wandb_env = {"WANDB_RUN_GROUP": group, "WANDB_PROJECT": WANDB_PROJECT}
        before = {k: os.environ.get(k) for k in wandb_env}
        os.environ.update({k: before[k] or v for k, v in wandb_env.items()})
        try:
            _run_stages(ctx, store, notifier, info)
        finally:
            for k, v in before.items():  # the stages' W&B group, not the process's
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if connection and connection[0] != "existing":
                import ray

                ray.shutdown()
    return state


def _run_stages(
    ctx: stages.Context, store: Store, notifier: Notifier, info: Callable[[str], None]
) -> None:
    state = ctx.state
    if state.next_stage() is None:
        state.status, state.reason = "finished", ""
        store.write(state)
        info(f"pipeline {state.settings.name}: every stage is done")
        return
    for name in STAGES:
        stage = state.stage(name)
        if stage.finished:
            continue
        if name == "promote" and state.settings.promote == "none":
            _end(ctx, store, notifier, name, "skipped", {}, "--promote none")
            continue
        state.start(name)
        store.write(state)
        notifier.send(message(state.settings.name, name, "running"))
        info(f"== {name}")
        try:
            output = stages.RUN[name](ctx)
        except stages.Stop as stop:
            _end(ctx, store, notifier, name, "stopped", stop.output, str(stop))
            info(f"pipeline {state.settings.name} stopped at {name}: {stop}")
            return
        except (stages.Interrupted, KeyboardInterrupt) as err:
            _end(ctx, store, notifier, name, "interrupted", None, one_line(err) or "Ctrl-C")
            raise KeyboardInterrupt from None
        except UserError as err:
            _end(ctx, store, notifier, name, "failed", None, str(err))
            raise
        except Exception as err:
            _end(
                ctx, store, notifier, name, "failed", None, f"{type(err).__name__}: {one_line(err)}"
            )
            raise
        _end(ctx, store, notifier, name, "done", output)


def _end(
    ctx: stages.Context,
    store: Store,
    notifier: Notifier,
    name: str,
    status: StageStatus,
    output: dict | None,
    reason: str = "",
) -> None:
    state = ctx.state
    stage = state.end(name, status, output, reason)
    store.write(state)
    notifier.send(message(state.settings.name, name, status, reason, stage.output))
    if state.status == "finished":
        notifier.send(message(state.settings.name, "pipeline", "finished", "", summary(state)))


def summary(state: PipelineState) -> dict:
    """The figures that matter, each named for the data it was measured on."""
    search, evaluate = state.output("search"), state.output("evaluate")
    gate, promote = state.output("gate"), state.output("promote")
    return {
        "best_trial": search.get("best_trial"),
        "best_trial_val_acc": search.get("best_val_acc"),
        "version": state.output("register").get("label"),
        "test_acc": evaluate.get("test_acc"),
        "test_n": evaluate.get("test_n"),
        "champion": gate.get("champion"),
        "champion_test_acc": gate.get("champion_test_acc"),
        "promotion": promote.get("outcome") or state.stage("promote").status,
    }
