"""The stages of a pipeline, in order, each a function of the pipeline's settings and the
outputs of the stages before it (`Context`), returning its own output for pipeline.json:

  search    the `tune` search (jobs/tune/driver.py); it selects on validation accuracy
  retrain   the best configuration at its full budget (jobs/train/driver.py), which ends with
            the one test evaluation of its best/ weights
  evaluate  reads that evaluation back (never a second one): test accuracy and test-set md5
  register  the retrained run as a new version of the registered model (modresnet.registry)
  gate      the new version against the champion: same test set (md5), test accuracy within
            the tolerance
  promote   canary or direct promotion of the running Serve app (serve/canary/promote.py)

Each stage also has `verify_*`: what a rerun checks before it trusts a finished stage.
A stage that ends the pipeline on purpose (the gate refuses, the canary rolls back) raises
`Stop`; a search or retrain interrupted by Ctrl-C raises `Interrupted`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.pipeline.settings import PipelineSettings, PipelineSetupError
from jobs.pipeline.state import PipelineState, Store
from modresnet import storage as object_storage
from modresnet.errors import UserError, one_line

if TYPE_CHECKING:
    from rich.console import Console

    from modresnet.registry import Registry

RETRAIN = "retrain"  # the retrained run: <storage>/<name>/retrain


class Stop(Exception):  # noqa: N818 - a planned end of the pipeline, not an error
    """The pipeline ends here on purpose; the message says why, `output` what the stage saw."""

    def __init__(self, reason: str, output: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.output = output or {}


class Interrupted(Exception):  # noqa: N818
    """The user interrupted the stage; the same command continues it."""


@dataclass
class Context:
    """What a stage gets: the settings, the state so far (earlier stages' outputs), where it
    all lives, and how this run reaches Ray and talks to the user."""

    settings: PipelineSettings
    state: PipelineState
    store: Store
    address: str | None = None
    wandb: bool = True
    verbose: bool = False
    info: Callable[[str], None] = print
    console: Console | None = None
    connect: Callable[[], None] = lambda: None  # reach Ray once, before the first Ray stage
    save: Callable[[], None] = lambda: None  # write pipeline.json now (a stage's own progress)
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        if self._registry is None:
            from modresnet.registry import open_registry

            self._registry = open_registry(self.settings.registry, storage=self.settings.storage)
        return self._registry

    def remote(self, *parts: str) -> object_storage.Location | None:
        return self.store.remote.join(*parts) if self.store.remote is not None else None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read_text(local: Path, remote: object_storage.Location | None) -> str | None:
    """A small file of a stage's output, from the object store when the pipeline lives there."""
    if remote is None:
        return local.read_text(encoding="utf-8") if local.exists() else None
    if not object_storage.exists(remote):
        return None
    fs, path = remote.filesystem()
    try:
        with fs.open_input_stream(path) as src:
            return bytes(src.read(object_storage.MAX_META)).decode("utf-8")
    except Exception as err:  # noqa: BLE001
        raise object_storage.StorageError(f"{remote.uri}: cannot read ({one_line(err)})") from None


# --------------------------------------------------------------------------- search


def search_base(s: PipelineSettings) -> Any:
    """The trials' base config: the pipeline's, on --search-subset training images if given."""
    if s.search_subset is None:
        return s.base
    return s.base.replace(data=s.base.data.replace(subset=s.search_subset))


def search(ctx: Context) -> dict[str, Any]:
    """Run the search, or continue it as `tune --resume` does. A search that cannot be
    restored (object storage, or stopped before Tune saved its state) starts again under the
    next name, search-2, search-3, ..."""
    from jobs.tune import driver as tune_driver
    from jobs.tune.job import JOB_FILE, new_job, read_job
    from jobs.tune.space import parse_space

    s, stage = ctx.settings, ctx.state.stage("search")
    name = stage.output.get("experiment_name")
    resume = False
    if (
        name is not None
        and ctx.store.remote is None
        and (ctx.store.local / name / JOB_FILE).exists()
    ):
        from ray import tune

        resume = tune.Tuner.can_restore(str(ctx.store.local / name))
    if name is None:
        name = "search"
    elif not resume:
        name = f"search-{stage.attempt}"
        ctx.info(f"search: the earlier search cannot be restored; starting it again as {name}")
    stage.output = {"experiment_name": name}
    ctx.save()  # a rerun after a crash in the search knows which search to continue
    if resume:
        job = read_job(ctx.store.local / name)
    else:
        space = parse_space(s.space, s.base, s.space_source)
        job = new_job(
            search_base(s),
            space,
            s.search,
            ctx.store.local,
            name,
            remote=ctx.store.remote.uri if ctx.store.remote is not None else None,
            test_best=False,  # selection is on validation; only the retrain sees the test set
        )
    ctx.connect()
    outcome = tune_driver.run_search(
        job,
        tune_driver.TuneOptions(address=ctx.address, wandb=ctx.wandb),
        resume=resume,
        verbose=ctx.verbose,
        console=ctx.console,
        info=ctx.info,
    )
    if outcome.all_failed:
        raise UserError(f"the search {name} failed: {outcome.failure()}")
    if outcome.interrupted or outcome.best is None:
        raise Interrupted(f"the search {name} was interrupted")
    best = outcome.best
    best_yaml = best.config.to_yaml()
    remote = ctx.remote(name)
    return {
        "experiment_name": name,
        "experiment": remote.uri if remote is not None else str(job.experiment),
        "trials": len(outcome.rows),
        "stopped_early": sum(r.stopped_early for r in outcome.rows),
        "best_trial": best.trial_id,
        "best_val_acc": best.best_val_acc,
        "metric": job.metric,
        "best_metric": best.best_metric,
        "best_config": best.config.to_dict(),
        "best_config_sha256": sha256_text(best_yaml),
    }


def verify_search(ctx: Context, out: dict[str, Any]) -> str | None:
    name = out.get("experiment_name", "search")
    text = _read_text(
        ctx.store.local / name / "best_config.yaml", ctx.remote(name, "best_config.yaml")
    )
    if text is None:
        return f"the search's best_config.yaml is missing from {out.get('experiment')}"
    if sha256_text(text) != out.get("best_config_sha256"):
        return f"the search's best_config.yaml in {out.get('experiment')} has changed"
    return None


# --------------------------------------------------------------------------- retrain


def retrain_config(ctx: Context) -> Any:
    """The best trial's configuration at the pipeline's full budget: the base's epochs and
    training images (the trials may have had fewer of both)."""
    from modresnet import config as configs

    base = ctx.settings.base
    best = configs.from_dict(ctx.state.output("search")["best_config"])
    return best.replace(
        data=best.data.replace(subset=base.data.subset),
        train=best.train.replace(epochs=base.train.epochs),
    )


def _test_result(ctx: Context) -> dict[str, Any] | None:
    text = _read_text(ctx.store.local / RETRAIN / "test.json", ctx.remote(RETRAIN, "test.json"))
    if text is None:
        return None
    try:
        result = json.loads(text)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def retrain(ctx: Context) -> dict[str, Any]:
    """Train the best configuration with Ray Train; a run the driver left unfinished resumes
    from its last checkpoint (train's own resume), a finished one is not trained again."""
    from jobs.train.driver import RayOptions, train_ray
    from modresnet.cli_common import describe, epoch_line

    cfg = retrain_config(ctx)
    test = _test_result(ctx)
    if test is None:
        r = ctx.settings.retrain
        ctx.info(describe(cfg))
        ctx.connect()
        result = train_ray(
            cfg,
            ctx.store.local / RETRAIN,
            RayOptions(
                workers=r.workers,
                use_gpu=r.gpu,
                cpus_per_worker=r.cpus_per_worker,
                address=ctx.address,
                max_failures=r.max_failures,
                wandb=ctx.wandb,
            ),
            remote=ctx.remote(RETRAIN),
            on_epoch_done=lambda record: ctx.info(epoch_line(record, cfg.train.epochs)),
            info=ctx.info,
        )
        test = result.test
    remote = ctx.remote(RETRAIN)
    return {
        "run": remote.uri if remote is not None else str(ctx.store.local / RETRAIN),
        "epochs": cfg.train.epochs,
        "sha256": test["sha256"],
        "val_acc": test.get("val_acc"),
    }


def verify_retrain(ctx: Context, out: dict[str, Any]) -> str | None:
    test = _test_result(ctx)
    if test is None:
        return f"the retrained run {out.get('run')} has no test.json"
    if test.get("sha256") != out.get("sha256"):
        return f"the retrained run {out.get('run')} holds other weights than it did"
    return None


# --------------------------------------------------------------------------- evaluate


def evaluate(ctx: Context) -> dict[str, Any]:
    """The retrain's one test evaluation, read back: it scored best/ (sha256) on the test set
    whose md5 the gate compares."""
    test = _test_result(ctx)
    run = ctx.state.output("retrain")
    if test is None or test.get("sha256") != run["sha256"]:
        raise PipelineSetupError(
            f"{run['run']}: test.json does not name its best/ weights ({run['sha256'][:12]}); "
            f"`modresnet evaluate {run['run']}` writes it, then run the pipeline again"
        )
    if not test.get("test_md5"):
        raise PipelineSetupError(
            f"{run['run']}/test.json has no test_md5, so the gate cannot tell which test set it "
            f"scored; `modresnet evaluate {run['run']}` records it"
        )
    return {
        "test_acc": test["test_acc"],
        "test_n": test["n"],
        "test_md5": test["test_md5"],
        "sha256": test["sha256"],
    }


def verify_evaluate(ctx: Context, out: dict[str, Any]) -> str | None:
    test = _test_result(ctx)
    if test is None or test.get("test_md5") != out.get("test_md5"):
        return "the retrained run's test evaluation has changed"
    return None


# --------------------------------------------------------------------------- register


def register(ctx: Context) -> dict[str, Any]:
    """Register the retrained run; after a crash between registering and saving the state,
    the version already holding these weights is the one."""
    s, run = ctx.settings, ctx.state.output("retrain")
    registry = ctx.registry()
    known = (
        [v for v in registry.versions(s.model) if v.sha256 == run["sha256"]]
        if (s.model in registry.names())
        else []
    )
    version = known[0] if known else registry.register(run["run"], s.model)
    search = ctx.state.output("search")
    for key, value in (
        ("pipeline", s.name),
        ("pipeline.search", search["experiment"]),
        ("pipeline.trial", search["best_trial"]),
    ):
        registry.note(s.model, version.version, key, str(value))
    return _version_output(version)


def _version_output(v: Any) -> dict[str, Any]:
    return {
        "version": v.version,
        "label": v.label,
        "sha256": v.sha256,
        "val_acc": v.val_acc,
        "test_acc": v.test_acc,
        "test_n": v.test_n,
        "test_md5": v.test_md5,
    }


def verify_register(ctx: Context, out: dict[str, Any]) -> str | None:
    try:
        v = ctx.registry().get(f"models:/{ctx.settings.model}/{out.get('version')}")
    except UserError as err:
        return f"version {out.get('label')} is not in the registry ({err})"
    if v.sha256 != out.get("sha256"):
        return f"version {out.get('label')} in the registry holds other weights"
    return None


# --------------------------------------------------------------------------- gate


def gate(ctx: Context) -> dict[str, Any]:
    """The new version against the champion, on test accuracy over the same test set."""
    from modresnet.registry import GateError

    s, new = ctx.settings, ctx.state.output("register")
    try:
        champion = ctx.registry().gate(s.model, new["version"], tolerance=s.tolerance)
    except GateError as err:
        raise Stop(str(err), {"candidate": new["label"], "tolerance": s.tolerance}) from None
    return {
        "candidate": new["label"],
        "candidate_test_acc": new["test_acc"],
        "champion": champion.label if champion is not None else None,
        "champion_test_acc": champion.test_acc if champion is not None else None,
        "test_md5": new["test_md5"],
        "tolerance": s.tolerance,
    }


# --------------------------------------------------------------------------- promote


def promote(ctx: Context) -> dict[str, Any]:
    """Put the new version in production: a canary against the champion (`--promote canary`;
    the first version of a model has nothing to compare with and is promoted directly), or
    `direct`. A canary that rolls back stops the pipeline, the champion still serving."""
    from serve.canary.promote import promote, promote_direct

    s, new, checked = ctx.settings, ctx.state.output("register"), ctx.state.output("gate")
    how = s.promote
    if how == "canary" and checked.get("champion") is None:
        ctx.info(f"promote: {s.model} has no champion yet, so {new['label']} becomes it directly")
        how = "direct"
    ctx.connect()
    registry = ctx.registry()
    if how == "direct":
        result = promote_direct(
            registry, s.model, new["version"], s.app, ctx.address, ctx.info, tolerance=s.tolerance
        )
    else:
        result = promote(
            registry,
            s.model,
            new["version"],
            app=s.app,
            address=ctx.address,
            tolerance=s.tolerance,
            info=ctx.info,
            settings=s.canary,
        )
    out = {
        "how": how,
        "outcome": result.outcome,
        "champion": result.champion.label,
        "reason": result.reason,
        "steps": result.steps,
    }
    if out["outcome"] != "promoted":
        raise Stop(f"the canary rolled back ({out['reason']}); {out['champion']} still serves", out)
    return out


# --------------------------------------------------------------------------- the order

RUN: dict[str, Callable[[Context], dict[str, Any]]] = {
    "search": search,
    "retrain": retrain,
    "evaluate": evaluate,
    "register": register,
    "gate": gate,
    "promote": promote,
}
VERIFY: dict[str, Callable[[Context, dict[str, Any]], str | None]] = {
    "search": verify_search,
    "retrain": verify_retrain,
    "evaluate": verify_evaluate,
    "register": verify_register,
}
