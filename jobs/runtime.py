"""The one Ray runtime of modresnet: how train, tune, serve and the Jobs client reach Ray,
the Ray environment variables they set, and the W&B policy.

Connecting, one rule for every command (`connect`):
- a Ray already initialized in this process is used as it is, and left running;
- else the address: `--address`, else $RAY_ADDRESS (which `--address auto` defers to, as
  ray.init does). HOST:PORT is a cluster's GCS, checked reachable first so a wrong address
  fails in seconds instead of after Ray's minute of retries; `auto` alone joins the Ray that
  `ray start` started on this machine; an http(s) URL is a Jobs API: the one `modresnet
  cluster up` exports as RAY_ADDRESS is joined at its cluster's GCS, with its token
  (`ray_target`), any other is one line saying what to run instead;
- else (or with the address `local`) an embedded Ray that this process owns: every CPU of the
  machine (or `num_cpus`), a 256 MiB object store, token auth with a token only this
  process tree knows (`local_token_auth`), and the dashboard on 127.0.0.1. The dashboard
  is always on: Ray Train frees a finished run's placement group through the State API,
  which needs it, and so do `serve status` and `ray job` from another shell.

Environment: the Ray variables modresnet needs are `RAY_ENV`, applied here as defaults (an
explicit value in the environment wins); no other module writes os.environ.

W&B (`wandb_policy`), one rule for train and tune: on by default, online with
WANDB_API_KEY, otherwise offline (upload later with `wandb sync`); `--no-wandb` or
WANDB_MODE=disabled turns it off.

Secrets (WANDB_API_KEY, MODRESNET_API_KEY, RAY_AUTH_TOKEN, AWS_SECRET_ACCESS_KEY, ...) never
travel in a runtime_env, job metadata or Serve args: Ray shows all three through its State API
and dashboard, and its runtime-env agent writes runtime envs into its log. Every Ray process
reads them from its node's environment (the shell that ran `modresnet cluster up` or
`ray start`, the launcher's env, a Kubernetes Secret); a process that must log to W&B online
and finds no key there fails with one line saying so (`check_wandb_key`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jobs.cluster.state import ClusterState, cluster_at, load_state, modresnet_home
from modresnet.errors import UserError, one_line

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report from an embedded Ray or a client
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # worker prints stay plain (no Ray prefix)
    # Tune warns when syncing the experiment state takes a few seconds: it does on 2 cores
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Train's controller polls its workers (their start, reports, the end of the run) every
    # 2 s by default, and a run waits on those polls: a 3-epoch 2-worker debug run took
    # 29.6-30.4 s, 24.2 s at 0.5 s with the same img/s (0.1 s: 22.7 s, ~10 % fewer img/s).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
EMBEDDED_OBJECT_STORE_BYTES = 256 * 1024**2
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
_RAY_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"


class RayConnectError(UserError):
    """The Ray address given cannot be reached or joined."""


# --------------------------------------------------------------------------- environment


@contextmanager
def env_override(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, hide) environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def is_secret_name(name: str) -> bool:
    """The one rule for what must never travel in a runtime_env: a name that looks like a
    credential (WANDB_API_KEY, RAY_AUTH_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""
    return SECRET_NAME.search(name) is not None


def apply_ray_env() -> None:
    """RAY_ENV as defaults of this process (and so of every Ray process it starts)."""
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)


def quiet_tune_output(verbose: bool) -> AbstractContextManager[None]:
    """Without `verbose`, Ray Tune's legacy output engine (read at fit time): the new one
    prints its experiment banner even at verbose=0, the legacy one prints nothing."""
    return env_override({} if verbose else {"RAY_AIR_NEW_OUTPUT": "0"})


def local_token_auth() -> None:
    """Token auth for a Ray this process starts, without Ray's warning or a token file.

    A local `ray.init()` with RAY_AUTH_MODE unset turns token auth on, writes
    ~/.ray/auth_token and warns on every start. Setting the mode explicitly keeps auth on
    and silences the warning; a token only this process tree knows (children inherit the
    environment) keeps the home folder untouched. An explicit RAY_AUTH_MODE is respected."""
    import secrets

    from jobs.ray_private import reload_auth_config

    if "RAY_AUTH_MODE" in os.environ:
        return
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    reload_auth_config()  # this process read Ray's config when it imported ray


# --------------------------------------------------------------------------- logs


def ray_logs_to(path: Path) -> None:
    """Send the Python logs of Ray's libraries (ray, ray.tune, ray.train, ray.serve, ...)
    to `path` (appended) instead of the console; call again after importing a Ray library
    that sets up its own console handler (ray.serve does at import). Idempotent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["ray"] + sorted(n for n in logging.root.manager.loggerDict if n.startswith("ray."))
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    for name in names:
        logger = logging.getLogger(name)
        if not logger.handlers and name != "ray":
            continue
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                continue  # Ray's own files (session logs) stay
            if isinstance(handler, logging.StreamHandler) and (
                handler.stream in consoles or type(handler).__name__ == "PlainRayHandler"
            ):
                logger.removeHandler(handler)
        if logger.propagate and name != "ray":
            continue  # reaches "ray"'s file handler
        target = str(path.resolve())
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == target for h in logger.handlers
        ):
            handler = logging.FileHandler(target, mode="a", encoding="utf-8")
            handler.setFormatter(logging.Formatter(_RAY_LOG_FORMAT))
            logger.addHandler(handler)


# --------------------------------------------------------------------------- connecting


def check_address(address: str, timeout: float = 3.0, given: str | None = None) -> None:
    """Fail in seconds on a host:port nobody listens on (ray.init would retry for a minute).
    `given` is where the address came from, for the message (default: --address)."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    given = given or f"--address {address}"
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayConnectError(f"{given}: expected HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        instead = "unset RAY_ADDRESS" if given.startswith("RAY_") else "drop --address"
        raise RayConnectError(
            f"{given}: no Ray cluster reachable there ({err.strerror or err}); start one "
            f"with `ray start --head` or {instead} to use a local Ray"
        ) from None


@dataclass(frozen=True)
class RayTarget:
    """The cluster a command joins: `address` for ray.init (HOST:PORT, ray://..., auto),
    `given` as the user wrote it (for messages), and the `modresnet cluster up` cluster it
    names, if any (its token goes with the connection)."""

    address: str
    given: str
    cluster: ClusterState | None = None


def ray_target(address: str | None) -> RayTarget | None:
    """The cluster to join by the module's rule; None means an embedded Ray. `auto` defers to
    $RAY_ADDRESS, as ray.init does; an http(s) URL is a Jobs API, joined only when it is the
    local cluster's (whose GCS it names), else one line saying what to run instead."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    value = (address or "").strip()
    if value and not (value == "auto" and env):
        given = f"--address {value}"
    elif env:
        value, given = env, f"RAY_ADDRESS={env}"
    else:
        return None
    if value == "local":
        return None
    if not value.startswith(("http://", "https://")):
        return RayTarget(value, given)
    cluster = cluster_at(value)
    if cluster is not None:
        return RayTarget(cluster.gcs_address, given, cluster)
    state = load_state()
    local = (
        f"the `modresnet cluster up` cluster of {modresnet_home()} is at {state.jobs_address}"
        if state is not None
        else f"no `modresnet cluster up` cluster is up in {modresnet_home()}"
    )
    instead = "unset RAY_ADDRESS" if given.startswith("RAY_") else "drop --address"
    raise RayConnectError(
        f"{given} is a Ray Jobs API URL, which train, tune and serve cannot join, and {local}: "
        f"run the command on that cluster with `modresnet jobs submit --address {value} "
        f"train|tune|serve ...`, join a cluster by its GCS address with --address HOST:6379, or "
        f"{instead} to use a Ray of this process"
    )


def resolve_address(address: str | None) -> str | None:
    """The address ray.init joins (`ray_target`); None means an embedded Ray."""
    target = ray_target(address)
    return target.address if target is not None else None


def cluster_auth_env(cluster: ClusterState) -> dict[str, str]:
    """What this process must set to join `cluster`, whose Ray checks every client's token: a
    client sends one only with RAY_AUTH_MODE=token, and this one reads the cluster's token file
    unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH names another."""
    env = {} if os.environ.get("RAY_AUTH_MODE") == "token" else {"RAY_AUTH_MODE": "token"}
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        env["RAY_AUTH_TOKEN_PATH"] = cluster.token_path
    return env


Connection = Literal["existing", "joined", "embedded"]


def connect(
    address: str | None = None, log_file: Path | None = None, num_cpus: int | None = None
) -> Connection:
    """Reach Ray by the module's rule. "existing": this process was connected already (leave
    it so); "joined": this call connected to a cluster (ray.shutdown() disconnects, the
    cluster stays); "embedded": this call started a Ray that ends with ray.shutdown(), and
    Serve apps with it. With `log_file`, Ray's Python logs go there (INFO and up) instead of
    the console; `num_cpus` sizes an embedded Ray (default: every CPU)."""
    import ray

    apply_ray_env()
    if log_file is not None:
        ray_logs_to(log_file)
    if ray.is_initialized():
        return "existing"
    level = logging.INFO if log_file is not None else logging.WARNING
    target = ray_target(address)
    if target is not None:
        _join(target, level)
    else:
        local_token_auth()
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            object_store_memory=EMBEDDED_OBJECT_STORE_BYTES,
            log_to_driver=False,
            logging_level=level,
        )
    if log_file is not None:
        ray_logs_to(log_file)  # ray.init may have set up more of Ray's loggers
    return "joined" if target is not None else "embedded"


def _join(target: RayTarget, level: int) -> None:
    """ray.init(target.address), every failure one complete line. RAY_ADDRESS is hidden from
    it: ray.init lets RAY_ADDRESS override "auto", and here it may be the Jobs URL that
    `cluster up` exports, which ray.init cannot join."""
    import ray
    from ray.exceptions import AuthenticationError

    from jobs.ray_private import reload_auth_config

    if target.cluster is not None:
        auth = cluster_auth_env(target.cluster)
        if auth:
            os.environ.update(auth)
            reload_auth_config()  # this process read Ray's config when it imported ray
    try:
        check_address(target.address, given=target.given)
    except RayConnectError:
        if target.cluster is None:
            raise
        raise RayConnectError(
            f"{target.given}: the `modresnet cluster up` cluster of {modresnet_home()} does not "
            f'answer at its GCS {target.address}; start it again with `eval "$(modresnet '
            f'cluster up)"`'
        ) from None
    try:
        with env_override({"RAY_ADDRESS": None}):
            ray.init(address=target.address, log_to_driver=False, logging_level=level)
    except AuthenticationError as err:
        raise RayConnectError(
            f"{target.given}: the cluster refused this client ({one_line(err)}); set "
            f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to its token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise RayConnectError(f"{target.given}: cannot connect ({one_line(err)})") from None


# --------------------------------------------------------------------------- W&B

WandbMode = Literal["online", "offline", "disabled"]
# with WANDB_MODE: all a worker is sent (WANDB_RUN_GROUP: the group of a pipeline's runs)
WANDB_WORKER_VARS = ("WANDB_SILENT", "WANDB_PROJECT", "WANDB_RUN_GROUP")


class WandbKeyError(UserError):
    """W&B logs online, but a Ray node that logs has no API key in its environment."""


@dataclass(frozen=True)
class WandbPolicy:
    """What W&B does for this command, and the one line that tells the user."""

    mode: WandbMode
    reason: str

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    @property
    def group(self) -> str | None:
        """The group every W&B run of this command joins: W&B's own WANDB_RUN_GROUP (which
        `modresnet pipeline` sets, so a pipeline's trials and retrain share one), else None:
        the command's own grouping."""
        return os.environ.get("WANDB_RUN_GROUP") or None

    def worker_env(self) -> dict[str, str]:
        """The W&B settings Ray workers on other nodes need to log the same way. Never the
        API key: a runtime_env is readable through Ray's State API, so each node reads the
        key from its own environment (`check_wandb_key`)."""
        if not self.enabled:
            return {}
        env = {k: os.environ[k] for k in WANDB_WORKER_VARS if k in os.environ}
        return {**env, "WANDB_MODE": self.mode}


def wandb_policy(requested: bool | None = True) -> WandbPolicy:
    """The W&B rule of train and tune: only an explicit False (--no-wandb) or
    WANDB_MODE=disabled turns it off; online with WANDB_API_KEY, else offline."""
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if requested is False or env_mode == "disabled":
        return WandbPolicy("disabled", "W&B off (--no-wandb or WANDB_MODE=disabled)")
    if env_mode in ("offline", "dryrun") or not os.environ.get("WANDB_API_KEY"):
        return WandbPolicy(
            "offline",
            "W&B offline (set WANDB_API_KEY to log online; "
            "`wandb sync <dir>/wandb/offline-run-*` uploads later)",
        )
    return WandbPolicy("online", "W&B online")


def use_wandb_env(policy: WandbPolicy) -> None:
    """Make this process's environment agree with `policy`: Ray's W&B callback checks for
    an API key unless WANDB_MODE says offline."""
    if policy.mode == "offline":
        os.environ["WANDB_MODE"] = "offline"


def check_wandb_key(where: str) -> None:
    """Fail a Ray process that must log to W&B online when its node has no WANDB_API_KEY of
    its own (the driver's key is never sent to it), naming the node and the fix."""
    if os.environ.get("WANDB_API_KEY"):
        return
    import ray

    node = ray.util.get_node_ip_address() if ray.is_initialized() else socket.gethostname()
    raise WandbKeyError(
        f"W&B logs online (WANDB_API_KEY is set for the driver) but {where} on Ray node "
        f"{node} has no WANDB_API_KEY: set it in the environment of every Ray node (export "
        f"it before `modresnet cluster up` or `ray start`; on KubeRay, from a Secret in the "
        f"pod env), or log offline with WANDB_MODE=offline"
    )


def check_wandb_key_on_this_node(policy: WandbPolicy) -> None:
    """With W&B online on a cluster, check before the search starts that this driver's node,
    where the W&B logging actors run, has a key of its own (`check_wandb_key`)."""
    if policy.mode != "online":
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    probe = ray.remote(num_cpus=0, max_retries=0)(_key_problem).options(scheduling_strategy=here)
    problem = ray.get(probe.remote("the W&B logging of the search"))
    if problem:
        raise WandbKeyError(problem)


def _key_problem(where: str) -> str | None:
    try:
        check_wandb_key(where)
    except WandbKeyError as err:
        return str(err)
    return None
