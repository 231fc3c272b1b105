"""Ray Tune driver: an ASHA hyperparameter search over ModifiedResNet recipes.

Every trial trains through the one engine (`engine.fit`). With one worker per trial the
trial itself runs the loop and its `on_epoch` reports each epoch to Tune with a checkpoint
folder in the core format; with more, each trial launches a Ray Train `TorchTrainer` that
runs `jobs.train.train_loop_per_worker` and forwards its reports to Tune.

    <storage>/<name>/
      modresnet-tune.json  the search's settings (base config, space, ASHA); --resume reads it
      <trial dirs>/        Ray Tune's per-trial results (progress.csv, result.json,
                           TensorBoard events, checkpoints, wandb/offline-run-*)
      leaderboard.csv      one row per trial: key config values, val accuracy, epochs, early stop
      trials.png           validation accuracy per epoch of every trial, ASHA stops marked
      best_config.yaml     the best trial's full config (`modresnet train --config` reads it)
      best-run/            the best trial as a core run directory (best/ last/ metrics.jsonl
                           config.yaml test.json curves.png confusion.png): evaluate/predict/serve

The search space is a YAML file of SECTION.FIELD keys (see jobs/search_space.yaml).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from modresnet import checkpoint, config as configs, engine
from modresnet.config import Config, ConfigError
from modresnet.data import load_cifar10
from modresnet.errors import UserError
from modresnet.model import build_model
from modresnet.rundir import RunDir, finalize

DEFAULT_SPACE = Path(__file__).with_name("search_space.yaml")
JOB_FILE = "modresnet-tune.json"
BEST_RUN = "best-run"
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "quniform", "randint")
NOT_TUNABLE = {"train.epochs": "set by --max-epochs", "train.device": "set by --device",
               "train.threads": "follows --cpus-per-trial"}
SGD_ONLY = ("optim.momentum", "optim.nesterov")
ADAM_ONLY = ("optim.betas",)
METRICS = {"val_acc": "max", "val_loss": "min", "train_acc": "max", "train_loss": "min"}


class SpaceError(ConfigError):
    """The search-space file is wrong; the message names the file and the field."""


class TuneSetupError(UserError):
    """Flags or the experiment folder do not allow this search."""


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Param:
    key: str  # SECTION.FIELD
    kind: str  # "constant" or one of DISTRIBUTIONS
    args: tuple

    def domain(self):
        from ray import tune

        a = self.args
        if self.kind == "constant":
            return a[0]
        if self.kind == "choice":
            return tune.choice(list(a))
        if self.kind == "uniform":
            return tune.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return tune.loguniform(a[0], a[1])
        if self.kind == "quniform":
            return tune.quniform(a[0], a[1], a[2])
        return tune.randint(a[0], a[1] + 1)  # Ray's upper end is exclusive; ours is included

    def sample(self, rng: random.Random) -> Any:
        a = self.args
        if self.kind == "constant":
            return a[0]
        if self.kind == "choice":
            return rng.choice(a)
        if self.kind == "uniform":
            return rng.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(a[0]), math.log(a[1])))
        if self.kind == "quniform":
            return round(rng.uniform(a[0], a[1]) / a[2]) * a[2]
        return rng.randint(a[0], a[1])

    def extremes(self) -> list[Any]:
        if self.kind in ("constant", "choice"):
            return list(self.args)
        return [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, Param]
    source: str = "<space>"
    raw: dict = field(default_factory=dict)

    def param_space(self) -> dict:
        """Nested {section: {field: domain}} for the Tuner."""
        out: dict[str, dict] = {}
        for key, p in self.params.items():
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = p.domain()
        return out

    def tuned_keys(self) -> list[str]:
        return [k for k, p in self.params.items() if p.kind != "constant"]

    def point(self, config: Config) -> dict:
        """The nested values `config` has at every key of the space (e.g. the paper's recipe)."""
        values = config.to_dict()
        out: dict[str, dict] = {}
        for key in self.params:
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = values[section][name]
        return out


def flatten(nested: dict) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, fields in nested.items() if isinstance(fields, dict)
            for k, v in fields.items()}


def overrides_for(sampled: dict, base: Config) -> dict[str, Any]:
    """Dotted Config overrides for one sampled point, minus fields the sampled optimizer
    does not use (momentum/nesterov are sgd's, betas adam's)."""
    flat = flatten(sampled) if any(isinstance(v, dict) for v in sampled.values()) else dict(sampled)
    name = flat.get("optim.name", base.optim.name)
    drop = SGD_ONLY if name != "sgd" else ADAM_ONLY
    return {k: v for k, v in flat.items() if k not in drop}


def trial_config(base: Config, sampled: dict) -> Config:
    return base.with_overrides(overrides_for(sampled, base))


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{where}: expected a number, got {value!r}")
    return value


def _parse_param(where: str, key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        return Param(key, "constant", (spec,))
    if len(spec) != 1:
        raise SpaceError(f"{where}: expected one distribution ({', '.join(DISTRIBUTIONS)}), "
                         f"got {list(spec) or 'an empty mapping'}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {kind!r}; use one of "
                         f"{', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{where}: {kind} needs a list, e.g. {{{kind}: "
                         f"{'[a, b]' if kind == 'choice' else '[low, high]'}}}")
    if kind == "choice":
        return Param(key, kind, tuple(args))
    need = 3 if kind == "quniform" else 2
    if len(args) != need:
        raise SpaceError(f"{where}: {kind} needs {need} values "
                         f"({'[low, high, q]' if need == 3 else '[low, high]'}), got {args}")
    low, high = (_number(f"{where}.{kind}[{i}]", v) for i, v in enumerate(args[:2]))
    if not low < high:
        raise SpaceError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
        raise SpaceError(f"{where}: randint needs integer bounds, got {args}")
    if kind == "quniform":
        q = _number(f"{where}.quniform[2]", args[2])
        if q <= 0 or q > high - low:
            raise SpaceError(f"{where}: quniform needs 0 < q <= high - low, got q={q}")
    return Param(key, kind, tuple(args))


def _context(key: str, base: Config) -> dict[str, Any]:
    """Overrides that make `key` meaningful on its own (nesterov needs sgd and momentum)."""
    if key in SGD_ONLY and base.optim.name != "sgd":
        return {"optim.name": "sgd", "optim.momentum": base.optim.momentum or 0.9}
    if key in ADAM_ONLY and base.optim.name == "sgd":
        return {"optim.name": "adam"}
    return {}


def parse_space(values: Any, base: Config, source: str = "<space>", checks: int = 200,
                seed: int = 0) -> SearchSpace:
    if values is None:
        raise SpaceError(f"{source}: empty search space; add SECTION.FIELD keys")
    if not isinstance(values, dict):
        raise SpaceError(f"{source}: expected a mapping of SECTION.FIELD keys, got "
                         f"{type(values).__name__}")
    sections = base.to_dict()
    params: dict[str, Param] = {}
    for key, spec in values.items():
        where = f"{source}: {key}"
        if not isinstance(key, str):
            raise SpaceError(f"{where}: keys must be SECTION.FIELD strings")
        section, _, name = key.partition(".")
        if section not in sections or name not in sections[section]:
            known = (", ".join(sections[section]) if section in sections
                     else ", ".join(sections))
            raise SpaceError(f"{where}: unknown key; use SECTION.FIELD "
                             f"({section + ' has' if section in sections else 'sections are'} "
                             f"{known})")
        if section in ("data", "model"):
            raise SpaceError(f"{where}: {section}.* is not tunable here; set it with the "
                             f"data/config flags")
        if key in NOT_TUNABLE:
            raise SpaceError(f"{where}: not tunable ({NOT_TUNABLE[key]})")
        params[key] = _parse_param(where, key, spec)
    if not params:
        raise SpaceError(f"{source}: empty search space; add SECTION.FIELD keys")
    # every bound and every choice on its own, then random whole points
    for key, p in params.items():
        for value in p.extremes():
            try:
                base.with_overrides({**_context(key, base), key: value})
            except ConfigError as err:
                raise SpaceError(f"{source}: {key}: value {value!r} makes an invalid config "
                                 f"({err})") from None
    rng = random.Random(seed)
    for _ in range(checks):
        point = {k: p.sample(rng) for k, p in params.items()}
        try:
            trial_config(base, point)
        except ConfigError as err:
            raise SpaceError(f"{source}: a sampled point makes an invalid config ({err}); "
                             f"narrow that field's range") from None
    return SearchSpace(params, source, dict(values))


def load_space(path: str | Path, base: Config) -> SearchSpace:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"search space {path}: not found") from None
    except IsADirectoryError:
        raise SpaceError(f"search space {path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"search space {path}: not valid YAML ({err})") from None
    return parse_space(values, base, str(path))


# --------------------------------------------------------------------------- trial side


def _report_metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def run_trial(params: dict, job: dict) -> None:
    """One Tune trial: the config of this point, trained by engine.fit, reported per epoch."""
    from ray import tune

    base = configs.from_dict(job["base"])
    config = trial_config(base, params)
    if job["workers_per_trial"] > 1:
        return _run_train_trial(config, job)
    threads = config.train.threads or max(1, int(job["cpus_per_trial"]))
    torch.set_num_threads(threads)
    device = engine.select_device(config.train.device)
    data = load_cifar10(config.data)
    engine.seed_everything(config.train.seed)
    model = build_model(config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = engine.build_state(config, model, len(data.train))
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            checkpoint.load_training_state(Path(d), state)

    def on_epoch(record: dict, st: engine.TrainingState) -> None:
        with tempfile.TemporaryDirectory(prefix="modresnet-tune-") as d:
            checkpoint.save_model(Path(d), st.eval_model(), config, data.classes, st.epoch, record)
            checkpoint.save_training_state(Path(d), st)
            tune.report(_report_metrics(record), checkpoint=tune.Checkpoint.from_directory(d))

    train, val = engine.to_device(data.train, device), engine.to_device(data.val, device)
    engine.fit(state, train, val, config, device, on_epoch)


def _run_train_trial(config: Config, job: dict) -> None:
    """A data-parallel trial: a TorchTrainer over jobs.train's worker loop. Its Train run is
    named after the trial, so a restored trial resumes that run from its last checkpoint."""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs.train import train_loop_per_worker

    workers = job["workers_per_trial"]
    # The trial itself holds 0.01 CPU (see _trainable); the workers share the rest, so a
    # trial of --cpus-per-trial N fits in N CPUs (whole CPUs per worker above one).
    per_worker_cpu = (job["cpus_per_trial"] - 0.01) / workers
    if per_worker_cpu >= 1:
        per_worker_cpu = float(int(job["cpus_per_trial"] // workers))
    per_worker_gpu = job["gpus_per_trial"] / workers
    trial_id = tune.get_context().get_trial_id()
    resources = {"CPU": per_worker_cpu, **({"GPU": per_worker_gpu} if per_worker_gpu else {})}
    TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "threads": max(1, int(per_worker_cpu)),
                           "wandb": None},
        torch_config=TorchConfig(backend="nccl" if per_worker_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=bool(per_worker_gpu),
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}", storage_path=job["train_storage"],
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=job["metric"],
                checkpoint_score_order=job["mode"]),
            failure_config=ray.train.FailureConfig(max_failures=1)),
    ).fit()


# --------------------------------------------------------------------------- driver side


@dataclass(frozen=True)
class TuneOptions:
    samples: int = 8
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 2
    concurrent: int = 2
    metric: str = "val_acc"
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    include_paper: bool = False
    search_seed: int = 0
    address: str | None = None
    wandb: bool | None = None  # None: on (offline without WANDB_API_KEY)
    wandb_project: str = "modresnet-tune"
    upload_timeout: int = 60

    def check(self) -> None:
        if self.metric not in METRICS:
            raise TuneSetupError(f"--metric: must be one of {', '.join(METRICS)}; got {self.metric!r}")
        for flag, value, low in (("--samples", self.samples, 1), ("--max-epochs", self.max_epochs, 1),
                                 ("--grace-period", self.grace_period, 1),
                                 ("--reduction-factor", self.reduction_factor, 2),
                                 ("--concurrent", self.concurrent, 1),
                                 ("--workers-per-trial", self.workers_per_trial, 1)):
            if value < low:
                raise TuneSetupError(f"{flag}: must be at least {low}, got {value}")
        if self.grace_period > self.max_epochs:
            raise TuneSetupError(f"--grace-period {self.grace_period} exceeds --max-epochs "
                                 f"{self.max_epochs}; ASHA could never stop a trial")
        if self.cpus_per_trial <= 0:
            raise TuneSetupError(f"--cpus-per-trial: must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise TuneSetupError(f"--gpus-per-trial: must be >= 0, got {self.gpus_per_trial}")

    @property
    def mode(self) -> str:
        return METRICS[self.metric]


@dataclass
class TrialRow:
    trial_id: str
    status: str
    config: Config
    values: dict[str, Any]
    history: list[dict]
    best_metric: float
    best_val_acc: float
    epochs: int
    stopped_early: bool
    latest: Path | None
    best: Path | None
    path: str


@dataclass
class TuneOutcome:
    path: Path
    rows: list[TrialRow]
    interrupted: bool
    best: TrialRow | None = None
    test: dict | None = None
    files: dict[str, Path] = field(default_factory=dict)


def _flushing_wandb_callback():
    """WandbLoggerCallback whose per-trial actor tears wandb down after `finish`, so the
    offline run file is complete before Ray kills the actor (finish alone returns before
    wandb-core has written the last records, and a trial ending last lost them)."""
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class _FlushingActor(_WandbLoggingActor):
        def run(self):
            super().run()
            self._wandb.teardown()

    class FlushingWandbLoggerCallback(WandbLoggerCallback):
        _logger_actor_cls = _FlushingActor

    return FlushingWandbLoggerCallback


def _wandb_callbacks(options: TuneOptions, group: str, info: Callable[[str], None]) -> list:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if options.wandb is False or mode == "disabled":
        info("W&B off")
        return []
    if not os.environ.get("WANDB_API_KEY") and mode not in ("offline", "dryrun"):
        os.environ["WANDB_MODE"] = mode = "offline"  # the callback's key check honours this
    offline = mode in ("offline", "dryrun")
    info(f"W&B on ({'offline: wandb sync <trial dir>/wandb/offline-run-* later' if offline else 'online'}), "
         f"project {options.wandb_project}, group {group}")
    kwargs = {"mode": "offline"} if offline else {}
    return [_flushing_wandb_callback()(project=os.environ.get("WANDB_PROJECT", options.wandb_project),
                                group=group, upload_timeout=options.upload_timeout,
                                log_config=True, **kwargs)]


def _connect(address: str | None) -> bool:
    import ray

    if ray.is_initialized():
        return False
    try:
        from jobs.train import connect
    except ImportError:  # the Ray Train driver is optional for single-worker trials
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024**2)
        return True
    return connect(address)


def _trainable(job: dict):
    from ray import tune

    if job["workers_per_trial"] > 1:  # the trial only drives a TorchTrainer; its workers hold the CPUs
        resources = {"cpu": 0.01}
    else:
        resources = {"cpu": job["cpus_per_trial"], "gpu": job["gpus_per_trial"]}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), resources)


def _tuner_parts(job: dict, callbacks: list):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = configs.from_dict(job["base"])
    space = parse_space(job["space"], base, job["space_source"], checks=0)
    points = [space.point(configs.paper())] if job["include_paper"] else None
    scheduler = ASHAScheduler(time_attr="epoch", max_t=job["max_epochs"],
                              grace_period=job["grace_period"],
                              reduction_factor=job["reduction_factor"])
    search_alg = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=job["concurrent"],
                                       random_state=job["search_seed"])
    tune_config = tune.TuneConfig(metric=job["metric"], mode=job["mode"],
                                  num_samples=job["samples"], scheduler=scheduler,
                                  search_alg=search_alg)
    run_config = tune.RunConfig(
        name=job["name"], storage_path=job["storage"], callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1,
                                                checkpoint_score_attribute=job["metric"],
                                                checkpoint_score_order=job["mode"]),
        failure_config=tune.FailureConfig(max_failures=1))
    return space.param_space(), tune_config, run_config


def new_job(base: Config, space: SearchSpace, options: TuneOptions, storage: Path,
            name: str) -> dict:
    options.check()
    base = base.with_overrides({"train.epochs": options.max_epochs})
    exp = storage / name
    return {"name": name, "storage": str(storage), "base": base.to_dict(),
            "space": space.raw, "space_source": space.source,
            "samples": options.samples, "max_epochs": options.max_epochs,
            "grace_period": options.grace_period, "reduction_factor": options.reduction_factor,
            "concurrent": options.concurrent, "metric": options.metric, "mode": options.mode,
            "workers_per_trial": options.workers_per_trial,
            "cpus_per_trial": options.cpus_per_trial, "gpus_per_trial": options.gpus_per_trial,
            "include_paper": options.include_paper, "search_seed": options.search_seed,
            "train_storage": str(exp / "train-runs")}


def read_job(exp: Path) -> dict:
    try:
        return json.loads((exp / JOB_FILE).read_text())
    except FileNotFoundError:
        raise TuneSetupError(f"--resume: {exp} holds no modresnet search ({JOB_FILE} missing); "
                             f"check NAME and --storage") from None


def run_search(job: dict, options: TuneOptions, resume: bool = False,
               info: Callable[[str], None] = print) -> TuneOutcome:
    """Start (or restore) the search, then write the leaderboard, plot and best run."""
    storage = Path(job["storage"])
    exp = storage / job["name"]
    if resume:
        if not (exp / JOB_FILE).exists():
            raise TuneSetupError(f"--resume: no search at {exp}; check NAME and --storage")
    else:
        if exp.exists() and any(exp.iterdir()):
            raise TuneSetupError(f"{exp} already holds a search; continue it with --resume "
                                 f"{job['name']}, or choose another --name")
        exp.mkdir(parents=True, exist_ok=True)
        (exp / JOB_FILE).write_text(json.dumps(job, indent=2))
    if job["workers_per_trial"] > 1:
        try:
            from jobs.train import train_loop_per_worker  # noqa: F401
        except ImportError as err:
            raise TuneSetupError(f"--workers-per-trial {job['workers_per_trial']} needs the Ray "
                                 f"Train worker in jobs/train.py ({err})") from None

    from ray import tune

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    callbacks = _wandb_callbacks(options, job["name"], info)
    started = _connect(options.address)
    try:
        import ray

        cpus = ray.cluster_resources().get("CPU", 0)
        if job["cpus_per_trial"] > cpus:
            raise TuneSetupError(f"--cpus-per-trial {job['cpus_per_trial']:g} exceeds the "
                                 f"{cpus:g} CPUs of the Ray cluster")
        if resume:
            if not tune.Tuner.can_restore(str(exp)):
                raise TuneSetupError(f"--resume: {exp} has no Tune experiment state to restore "
                                     f"(it was interrupted before the first trial started); "
                                     f"start it again under a new --name")
            param_space, _, _ = _tuner_parts(job, callbacks)
            tuner = tune.Tuner.restore(str(exp), trainable=_trainable(job), resume_errored=True,
                                       param_space=param_space)
            info(f"resuming search {exp}")
        else:
            param_space, tune_config, run_config = _tuner_parts(job, callbacks)
            tuner = tune.Tuner(_trainable(job), param_space=param_space,
                               tune_config=tune_config, run_config=run_config)
        grid = tuner.fit()
        _sync_wandb_dirs(grid)
        return summarize(grid, job, info)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- results


def _sync_wandb_dirs(grid) -> None:
    """Copy each trial's W&B files from Ray's local trial folder to the experiment folder.
    Tune syncs a trial folder when the trial ends, which is before its W&B logging actor has
    written the last records; the callback has waited for every actor by the time fit returns."""
    try:
        trials = grid._experiment_analysis.trials
    except AttributeError:
        return
    for trial in trials:
        src, dst = Path(trial.local_path) / "wandb", Path(trial.path) / "wandb"
        if src.is_dir() and src.resolve() != dst.resolve():
            shutil.copytree(src, dst, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("latest-run"))


def _trial_status(grid) -> dict[str, str]:
    try:
        return {t.trial_id: t.status for t in grid._experiment_analysis.trials}
    except AttributeError:  # private API moved: treat every trial with results as finished
        return {}


def _checkpoint_dirs(result, job: dict) -> tuple[Path | None, Path | None]:
    """(latest, best) checkpoint folders of a trial, from Tune or its nested Train run."""
    latest = result.checkpoint
    best = result.get_best_checkpoint(job["metric"], job["mode"]) if result.best_checkpoints else None
    if latest is None and result.metrics and result.metrics.get("checkpoint_path"):
        import ray.train

        train_path = Path(job["train_storage"]) / f"train-{result.metrics['trial_id']}"
        try:
            train_result = ray.train.Result.from_path(str(train_path))
        except Exception:  # noqa: BLE001 - no usable Train run: the trial is reported without files
            return None, None
        latest = train_result.checkpoint
        best = train_result.get_best_checkpoint(job["metric"], job["mode"])
    latest_path = Path(latest.path) if latest is not None else None
    best_path = Path(best.path) if best is not None else latest_path
    return latest_path, best_path


def _history(result, latest: Path | None) -> list[dict]:
    if latest is not None and checkpoint.has_training_state(latest):
        return json.loads((latest / checkpoint.STATE_META).read_text())["history"]
    df = result.metrics_dataframe
    if df is None or "epoch" not in df:
        return []
    df = df.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return df.to_dict("records")


def collect(grid, job: dict) -> tuple[list[TrialRow], bool]:
    base = configs.from_dict(job["base"])
    space = parse_space(job["space"], base, job["space_source"], checks=0)
    statuses = _trial_status(grid)
    rows, interrupted = [], False
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        status = statuses.get(trial_id, "ERROR" if result.error else "TERMINATED")
        if status not in ("TERMINATED", "ERROR"):
            interrupted = True
        if not metrics:
            continue
        sampled = {k: v for k, v in result.config.items()}
        config = trial_config(base, sampled)
        latest, best = _checkpoint_dirs(result, job)
        history = _history(result, latest)
        if not history:
            continue
        pick = max if job["mode"] == "max" else min
        epochs = int(history[-1]["epoch"])
        rows.append(TrialRow(
            trial_id=trial_id, status=status, config=config,
            values={k: v for k, v in flatten(sampled).items() if k in space.params},
            history=history, best_metric=pick(h[job["metric"]] for h in history),
            best_val_acc=max(h["val_acc"] for h in history), epochs=epochs,
            stopped_early=status == "TERMINATED" and epochs < job["max_epochs"],
            latest=latest, best=best, path=result.path))
    reverse = job["mode"] == "max"
    rows.sort(key=lambda r: r.best_metric, reverse=reverse)
    return rows, interrupted


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt(v) for v in value)
    return str(value)


def write_leaderboard(rows: list[TrialRow], job: dict, path: Path) -> Path:
    keys = sorted({k for r in rows for k in r.values})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        extra = [f"best_{job['metric']}"] if job["metric"] != "val_acc" else []
        writer.writerow(["rank", "trial", *keys, "best_val_acc", "last_val_acc", *extra,
                         "epochs", "stopped_early", "status"])
        for i, r in enumerate(rows, 1):
            writer.writerow([i, r.trial_id, *[json.dumps(r.values[k]) if isinstance(r.values.get(k), list)
                                              else r.values.get(k, "") for k in keys],
                             f"{r.best_val_acc:.4f}", f"{r.history[-1]['val_acc']:.4f}",
                             *([f"{r.best_metric:.4f}"] if extra else []),
                             r.epochs, r.stopped_early, r.status])
    return path


def leaderboard_table(rows: list[TrialRow], job: dict, limit: int = 20):
    from rich.table import Table

    keys = sorted({k for r in rows for k in r.values if k in _varied(rows)})
    table = Table(title=f"ASHA leaderboard ({len(rows)} trials, metric {job['metric']})")
    table.add_column("#", justify="right")
    table.add_column("trial", no_wrap=True)
    short = [k.split(".", 1)[1] for k in keys]
    for k, s in zip(keys, short):
        table.add_column(s if short.count(s) == 1 else k)
    table.add_column("best val acc", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("stopped early")
    for i, r in enumerate(rows[:limit], 1):
        table.add_row(str(i), r.trial_id, *[_fmt(r.values.get(k, "")) for k in keys],
                      f"{100 * r.best_val_acc:.1f}%", f"{r.epochs}/{job['max_epochs']}",
                      "yes" if r.stopped_early else ("error" if r.status == "ERROR" else "no"))
    return table


def _varied(rows: list[TrialRow]) -> set[str]:
    keys = {k for r in rows for k in r.values}
    return {k for k in keys if len({json.dumps(r.values.get(k)) for r in rows}) > 1}


def plot_trials(rows: list[TrialRow], job: dict, path: Path) -> Path:
    from modresnet import plots  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5))
    rung = job["grace_period"]
    while rung < job["max_epochs"]:
        ax.axvline(rung, color="grey", ls=":", lw=1)
        rung *= job["reduction_factor"]
    for i, r in enumerate(rows):
        epochs = [h["epoch"] for h in r.history]
        accs = [100 * h["val_acc"] for h in r.history]
        best = i == 0
        line, = ax.plot(epochs, accs, "o-", lw=2.5 if best else 1, ms=3,
                        label=f"{r.trial_id}{' (best)' if best else ''}", zorder=3 if best else 2)
        if r.stopped_early:
            ax.plot(epochs[-1], accs[-1], "x", color="red", ms=10, mew=2, zorder=4)
    ax.plot([], [], "x", color="red", ms=10, mew=2, label="stopped by ASHA")
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)",
           title=f"Validation accuracy per trial (dotted: ASHA rungs, max {job['max_epochs']} epochs)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(rows) > 12 else 1, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def export_best(row: TrialRow, exp: Path) -> tuple[RunDir, dict]:
    """The best trial as a core run directory, and its test accuracy (evaluated once)."""
    if row.best is None or row.latest is None:
        raise TuneSetupError(f"best trial {row.trial_id} left no checkpoint to export")
    run = RunDir(exp / BEST_RUN)
    tmp = RunDir(exp / (BEST_RUN + ".tmp"))
    shutil.rmtree(tmp.path, ignore_errors=True)
    try:
        from jobs.train import write_run_dir
    except ImportError:
        write_run_dir = None
    if write_run_dir is not None:
        write_run_dir(tmp, row.config, row.latest, row.best)
    else:  # same layout, without the Ray Train driver
        tmp.create(row.config)
        tmp.write_metrics(row.history)
        shutil.copytree(row.best, tmp.best, ignore=shutil.ignore_patterns("train_state.*"))
        shutil.copytree(row.latest, tmp.last)
    data = load_cifar10(row.config.data)
    test = finalize(tmp, data.test, data.classes, torch.device("cpu"))
    shutil.rmtree(run.path, ignore_errors=True)
    tmp.path.rename(run.path)
    return run, test


def summarize(grid, job: dict, info: Callable[[str], None] = print) -> TuneOutcome:
    exp = Path(job["storage"]) / job["name"]
    rows, interrupted = collect(grid, job)
    outcome = TuneOutcome(exp, rows, interrupted)
    if not rows:
        return outcome
    outcome.files["leaderboard"] = write_leaderboard(rows, job, exp / "leaderboard.csv")
    outcome.files["plot"] = plot_trials(rows, job, exp / "trials.png")
    if interrupted:
        return outcome
    best = rows[0]
    outcome.best = best
    (exp / "best_config.yaml").write_text(best.config.to_yaml())
    outcome.files["best_config"] = exp / "best_config.yaml"
    run, test = export_best(best, exp)
    outcome.test = test
    outcome.files["best_run"] = run.path
    (exp / "summary.json").write_text(json.dumps({
        "best_trial": best.trial_id, f"best_{job['metric']}": best.best_metric,
        "best_val_acc": best.best_val_acc, "test_acc": test["test_acc"], "test_n": test["n"],
        "trials": len(rows), "stopped_early": sum(r.stopped_early for r in rows),
        "epochs_trained": sum(r.epochs for r in rows), "best_run": str(run.path),
        "best_config": best.values}, indent=2))
    outcome.files["summary"] = exp / "summary.json"
    return outcome
