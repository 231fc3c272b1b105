"""Every private Ray API modresnet relies on, in one place, behind a version check.

Ray keeps no promise about underscore names, so each use here was read in the Ray 2.60
source and is trusted on 2.60.x only: every function starts with `check_ray_version`, which
on another Ray raises a one-line UserError naming both versions and the fix. Nothing else in
the repository may touch a private Ray name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobs.runtime import is_secret_name
from modresnet.errors import UserError

SUPPORTED_RAY = "2.60"  # major.minor the private APIs below were read in


class UnsupportedRayError(UserError):
    """The installed Ray is not the version whose internals this module was written for."""


class JobsHttpError(RuntimeError):
    """A Jobs API request answered with an error status (Ray raises a bare RuntimeError)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"Request failed with status code {status}: {text}")
        self.status = status
        self.text = text


def check_ray_version(version: str | None = None) -> None:
    """Refuse a Ray other than 2.60.x before any private name is looked up."""
    if version is None:
        import ray

        version = ray.__version__
    if version.split(".")[:2] != SUPPORTED_RAY.split("."):
        raise UnsupportedRayError(
            f"Ray {version} is installed, but modresnet uses Ray internals checked on Ray "
            f"{SUPPORTED_RAY}.x only; install the supported version: pip install ray==2.60.0 "
            f"(or `pip install -c constraints.txt -e .`)"
        )


def reload_auth_config() -> None:
    """Make this process re-read RAY_AUTH_MODE/RAY_AUTH_TOKEN after changing them, as
    ray.init does when it turns auth on by default (authentication_token_setup)."""
    check_ray_version()
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def flushing_wandb_callback() -> type:
    """Ray's WandbLoggerCallback, with fixes and additions that need its internals.

    Its per-trial actor tears wandb down after `finish`, so the offline run file is complete
    before Ray kills the actor (finish alone returns before wandb-core has written the last
    records, and a trial ending last lost them). The actor is pinned to this node and lives
    as long as its trial, with no restarts: Ray's restartable actor, handed a Queue actor
    handle, made its core worker log an error line for every search (ray#53727).

    Its actors get no runtime_env: Ray's callback puts the driver's WANDB_API_KEY into theirs,
    readable through the State API; they read the key of the node they run on.

    `search` (a dict: search, scheduler, max_epochs) goes into every run's config, and
    `clean` (flat config -> the values that apply) drops fields the trial's optimizer does
    not use; a trial that ends before max_epochs logs `early_stop` (ASHA's stop)."""
    check_ray_version()
    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
    from ray.air.util.node import _force_on_current_node

    class FlushingActor(_WandbLoggingActor):
        def run(self) -> None:
            super().run()
            self._wandb.teardown()

    class FlushingWandbLoggerCallback(WandbLoggerCallback):
        _logger_actor_cls = FlushingActor

        def __init__(
            self,
            *args: Any,
            search: dict[str, Any] | None = None,
            clean: Callable[[dict], dict] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.search = search or {}
            self.clean = clean

        def _config(self, config: dict) -> dict:
            return {**(self.clean(config) if self.clean else config), **self.search}

        def _start_logging_actor(
            self, trial: Any, exclude_results: list[str], **wandb_init_kwargs: Any
        ) -> None:
            if not self._remote_logger_class:
                pinned: dict[str, Any] = dict(_force_on_current_node())  # type: ignore[arg-type]
                self._remote_logger_class = ray.remote(  # type: ignore[assignment]
                    num_cpus=0, **pinned, max_restarts=0
                )(self._logger_actor_cls)
            wandb_init_kwargs["config"] = self._config(wandb_init_kwargs.get("config") or {})
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if isinstance(result.get("config"), dict):
                result = {**result, "config": self._config(result["config"])}
            super().log_trial_result(iteration, trial, result)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            last = trial.last_result or {}
            epoch, limit = last.get("epoch"), self.search.get("max_epochs")
            if not failed and trial in self._trial_queues and epoch and limit and epoch < limit:
                event = {"early_stop": 1, "training_iteration": last.get("training_iteration")}
                self._trial_queues[trial].put((_QueueItem.RESULT, event))
            super().log_trial_end(trial, failed)

    return FlushingWandbLoggerCallback


def keep_secrets_out_of_trials() -> None:
    """Ray Tune copies the driver's AWS credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    ...) into the runtime_env of every trial actor, which the State API shows; take every
    secret off the list it copies, so a trial reads its node's own, as every Ray process does."""
    check_ray_version()
    from ray.tune.execution import class_cache

    names = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = {n for n in names if not is_secret_name(n)}


def restored_run_config(tuner: Any) -> Any:
    """The RunConfig a restored Tuner will use: the pickled one of the first run, which the
    public API offers no way to change (None where it cannot be found)."""
    check_ray_version()
    return getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)


def result_grid_trials(grid: Any) -> list[Any]:
    """The Trial objects behind a ResultGrid (status, local and storage paths), which its
    public Results do not carry."""
    check_ray_version()
    return list(grid._experiment_analysis.trials)


def jobs_client(
    address: str,
    headers: dict[str, str] | None,
    redirect_error: Callable[[str, int, str | None], Exception],
) -> Any:
    """A JobSubmissionClient that never follows a redirect (requests keeps the Authorization
    header on a same-host redirect: http -> https -> another port alike) and raises
    `JobsHttpError` with the status for a failed request, where Ray raises a RuntimeError
    whose only content is its message."""
    check_ray_version()
    from ray.job_submission import JobSubmissionClient

    class NoRedirectClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs["allow_redirects"] = False
            response = super()._do_request(method, endpoint, **kwargs)
            if response.is_redirect:
                raise redirect_error(
                    self._address, response.status_code, response.headers.get("Location")
                )
            return response

        def _raise_error(self, r: Any) -> None:
            raise JobsHttpError(r.status_code, r.text)

    return NoRedirectClient(address, headers=headers)
