"""The one Ray runtime (jobs/runtime.py) and the private-API guard (jobs/ray_private.py),
without starting Ray: the W&B rule every command shares, the address rule (the Jobs URL that
`modresnet cluster up` exports included), environment overrides that restore themselves, and
the clear error on a Ray other than 2.60."""

from __future__ import annotations

import logging
import os
import socket
import sys
import types

import pytest
from helpers.cluster import CLIENT_VARS, fake_state

from jobs import ray_private, runtime
from modresnet.errors import UserError


@pytest.mark.parametrize(
    ("requested", "env", "mode"),
    [
        (None, {}, "offline"),  # the default: on, offline without a key
        (True, {}, "offline"),
        (None, {"WANDB_API_KEY": "k"}, "online"),
        (None, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
        (None, {"WANDB_MODE": "dryrun"}, "offline"),
        (False, {"WANDB_API_KEY": "k"}, "disabled"),  # --no-wandb
        (True, {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, "disabled"),
    ],
)
def test_one_wandb_rule(monkeypatch, requested, env, mode):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    policy = runtime.wandb_policy(requested)
    assert policy.mode == mode
    assert policy.enabled == (mode != "disabled")
    assert policy.reason.startswith("W&B")
    worker = policy.worker_env()
    assert worker.get("WANDB_MODE") == (None if mode == "disabled" else mode)
    assert "WANDB_API_KEY" not in worker  # each node reads its own (a runtime_env is public)


def test_workers_get_the_wandb_settings_never_the_key(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "the-key")
    monkeypatch.setenv("WANDB_PROJECT", "p")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    worker = runtime.wandb_policy(None).worker_env()
    assert worker == {"WANDB_MODE": "online", "WANDB_PROJECT": "p", "WANDB_SILENT": "true"}
    assert "the-key" not in repr(worker)


def test_a_node_without_its_own_wandb_key_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k")
    runtime.check_wandb_key("rank 0")  # the node has one: nothing to say
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.raises(runtime.WandbKeyError) as err:
        runtime.check_wandb_key("the Ray Train worker of rank 0")
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert "\n" not in message and "the Ray Train worker of rank 0" in message
    fixes = ("WANDB_API_KEY", "modresnet cluster up", "ray start", "Secret", "WANDB_MODE=offline")
    assert [fix for fix in fixes if fix not in message] == []


def test_offline_policy_tells_rays_callback_in_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    runtime.use_wandb_env(runtime.wandb_policy(None))
    assert os.environ["WANDB_MODE"] == "offline"


def test_env_override_sets_hides_and_restores(monkeypatch):
    monkeypatch.setenv("MODRESNET_T_SET", "before")
    monkeypatch.delenv("MODRESNET_T_NEW", raising=False)
    with runtime.env_override({"MODRESNET_T_SET": None, "MODRESNET_T_NEW": "1"}):
        assert "MODRESNET_T_SET" not in os.environ and os.environ["MODRESNET_T_NEW"] == "1"
    assert os.environ["MODRESNET_T_SET"] == "before" and "MODRESNET_T_NEW" not in os.environ


def test_address_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("MODRESNET_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.resolve_address(None) is None  # embedded
    assert runtime.resolve_address("auto") == "auto"  # the Ray `ray start` started here
    assert runtime.resolve_address("local") is None
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert runtime.resolve_address(None) == "auto"
    assert runtime.resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"  # --address first
    assert runtime.resolve_address("local") is None  # an embedded Ray, whatever RAY_ADDRESS says
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert runtime.resolve_address("auto") == "10.0.0.5:6379"  # as ray.init reads "auto"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert runtime.resolve_address("auto") is None


@pytest.fixture()
def local_cluster(tmp_path, monkeypatch):
    """The state of a `modresnet cluster up` cluster in a fresh MODRESNET_HOME (no process
    behind it), and a shell with none of the client variables set."""
    from jobs.cluster.state import load_state

    for name in (*CLIENT_VARS, "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODRESNET_HOME", str(tmp_path))
    fake_state(tmp_path, gcs_port=46379, dashboard_port=48265)
    return load_state()


def test_the_local_clusters_jobs_url_joins_its_gcs(local_cluster, monkeypatch):
    """What `eval "$(modresnet cluster up)"` exports as RAY_ADDRESS is the Jobs API's URL;
    train, tune and serve join that cluster at its GCS."""
    url = local_cluster.jobs_address
    assert url == "http://127.0.0.1:48265"
    monkeypatch.setenv("RAY_ADDRESS", url)
    target = runtime.ray_target(None)
    assert target == runtime.RayTarget("127.0.0.1:46379", f"RAY_ADDRESS={url}", local_cluster)
    assert runtime.resolve_address("auto") == "127.0.0.1:46379"  # auto defers to RAY_ADDRESS
    assert runtime.resolve_address("local") is None
    assert runtime.resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    for given in (url, f"{url}/", "http://localhost:48265"):
        assert runtime.resolve_address(given) == "127.0.0.1:46379", given


def test_joining_the_local_cluster_sends_its_token(local_cluster, monkeypatch):
    """Its Ray refuses a client without the token, and a client sends one only with
    RAY_AUTH_MODE=token: set both unless the shell already says which token to send."""
    token_path = local_cluster.token_path
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    expected = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}
    assert runtime.cluster_auth_env(local_cluster) == expected
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the shell `cluster up` set up
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", token_path)
    assert runtime.cluster_auth_env(local_cluster) == {}
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-users-own")
    assert runtime.cluster_auth_env(local_cluster) == {}


@pytest.mark.parametrize(
    ("env", "address", "given", "instead"),
    [
        ("http://10.0.0.5:8265", None, "RAY_ADDRESS=http://10.0.0.5:8265", "unset RAY_ADDRESS"),
        ("http://10.0.0.5:8265", "auto", "RAY_ADDRESS=http://10.0.0.5:8265", "unset RAY_ADDRESS"),
        (None, "https://ray.example.com", "--address https://ray.example.com", "drop --address"),
        (None, "http://127.0.0.1:48266", "--address http://127.0.0.1:48266", "drop --address"),
        (None, "https://127.0.0.1:48265", "--address https://127.0.0.1:48265", "drop --address"),
    ],
)
def test_any_other_jobs_url_is_one_line_saying_what_to_run_instead(
    local_cluster, monkeypatch, env, address, given, instead
):
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(runtime.RayConnectError) as err:
        runtime.resolve_address(address)
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{given} is a Ray Jobs API URL")
    url = given.split("=", 1)[1] if "=" in given else given.split()[1]
    fixes = (f"modresnet jobs submit --address {url} train|tune|serve ...", "--address HOST:6379")
    assert [fix for fix in fixes if fix not in message] == []
    assert f"{instead} to use a Ray of this process" in message
    assert "cluster up` cluster of" in message and "http://127.0.0.1:48265" in message


def test_a_jobs_url_with_no_local_cluster_up_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("MODRESNET_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:48265")  # exported before `cluster down`
    with pytest.raises(runtime.RayConnectError, match="no `modresnet cluster up` cluster is up"):
        runtime.resolve_address(None)


def test_the_local_cluster_not_answering_is_one_line_before_ray_init(
    local_cluster, monkeypatch, tmp_path
):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: the GCS is gone
        fake_state(tmp_path, gcs_port=s.getsockname()[1], dashboard_port=48265)
        monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:48265")
        monkeypatch.setenv("RAY_AUTH_MODE", "token")  # nothing to change in Ray's config
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", local_cluster.token_path)
        with pytest.raises(runtime.RayConnectError) as err:
            runtime._join(runtime.ray_target(None), logging.WARNING)  # connect's, not ray.init
    message = str(err.value)
    assert "\n" not in message and "does not answer at its GCS" in message
    assert 'eval "$(modresnet cluster up)"' in message


def test_bad_or_unreachable_address_is_a_user_error_in_seconds():
    with pytest.raises(runtime.RayConnectError, match="expected HOST:PORT"):
        runtime.check_address("no-port")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused
        with pytest.raises(UserError, match="no Ray cluster reachable"):
            runtime.check_address(f"127.0.0.1:{port}")
        given = f"RAY_ADDRESS=127.0.0.1:{port}"  # the message names where the address came from
        with pytest.raises(UserError, match=rf"^{given}: no Ray .* or unset RAY_ADDRESS to"):
            runtime.check_address(f"127.0.0.1:{port}", given=given)
    runtime.check_address("auto")  # left to ray.init


def test_private_ray_apis_refuse_another_ray_version():
    ray_private.check_ray_version("2.60.0")
    ray_private.check_ray_version("2.60.3")
    with pytest.raises(ray_private.UnsupportedRayError) as err:
        ray_private.check_ray_version("2.61.0")
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert "Ray 2.61.0 is installed" in message and "2.60" in message
    assert "pip install ray==2.60.0" in message and "\n" not in message


def test_every_private_helper_checks_the_version_first(monkeypatch):
    # a stand-in for another Ray: no helper may reach a private name before the check
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(__version__="3.0.0"))
    calls = [
        ray_private.reload_auth_config,
        ray_private.flushing_wandb_callback,
        ray_private.keep_secrets_out_of_trials,
        lambda: ray_private.restored_run_config(object()),
        lambda: ray_private.result_grid_trials(object()),
        lambda: ray_private.jobs_client("http://127.0.0.1:1", None, RuntimeError),
    ]
    for call in calls:
        with pytest.raises(ray_private.UnsupportedRayError, match="Ray 3.0.0 is installed"):
            call()


def test_tune_trial_actors_get_no_secret_of_the_driver(monkeypatch):
    # Ray Tune copies AWS credentials from the driver into each trial actor's runtime_env
    from ray.tune.execution.class_cache import _ActorClassCache

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the-token")
    ray_private.keep_secrets_out_of_trials()

    class Trainable:
        pass

    options = repr(_ActorClassCache().get(Trainable)._default_options)
    assert "runtime_env" in options
    assert [s for s in ("the-key-id", "the-secret", "the-token") if s in options] == []
