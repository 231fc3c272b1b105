"""`modresnet jobs ...`: submit `modresnet train|tune|serve|pipeline` to a Ray cluster through the
Jobs API.

The job runs `python -m modresnet.cli <command> <args...>` in a working_dir staged from an
allowlist of this source tree (`shipped_files`): nothing else in a checkout (data, runs, .git,
.venv, a `.env`, keys) leaves the machine. The client authenticates with a Bearer header, so it
works whether or not this shell has RAY_AUTH_MODE=token. Token lookup: RAY_AUTH_TOKEN, then the
file RAY_AUTH_TOKEN_PATH, then the local cluster of $MODRESNET_HOME (only when the address is
that cluster's). The token goes only over https or to a loopback address (else an error;
--insecure-token overrides), and no request that carries it follows a redirect (http.py).

Address lookup: --address, then RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, then the local cluster.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.client import http
from jobs.client.http import is_loopback, parse_address
from jobs.cluster import state as local_cluster
from jobs.ray_private import JobsHttpError, jobs_client
from jobs.runtime import env_override, is_secret_name
from modresnet.errors import UserError

COMMANDS = ("train", "tune", "serve", "pipeline")
# Forwarded into the job's runtime_env (visible to anyone who can read the Jobs API, so never
# anything that looks like a credential: set WANDB_API_KEY on the cluster nodes instead).
FORWARD_VARS = ("MODRESNET_DATA", "MODRESNET_RUNS")
FORWARD_PREFIXES = ("WANDB_",)
EXIT_CODES = {"SUCCEEDED": 0, "RUNNING": 0, "PENDING": 0, "FAILED": 1, "STOPPED": 1}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONNECT_TIMEOUT_S = 5.0


class JobsError(UserError):
    """A user-fixable problem (bad address, no token, unknown job id): one line, exit 2."""


def project_root() -> Path:
    """The source tree shipped as working_dir: the checkout that holds this file."""
    root = Path(__file__).resolve().parents[2]
    if (root / "modresnet" / "cli.py").exists() and (root / "pyproject.toml").exists():
        return root
    cwd = Path.cwd()
    if (cwd / "modresnet" / "cli.py").exists():
        return cwd
    raise JobsError(
        "jobs submit ships the modresnet source tree as the job's working_dir; run it "
        "from a source checkout (pip install -e .)"
    )


# What a job needs: the packages (their source and config files only), the project metadata,
# the page's sample images and the cluster configs. Regular files only: a symlink could point
# anywhere. No .json by suffix: a cloud credential is often one.
SHIPPED_DIRS = ("modresnet", "jobs", "serve", "cluster")
SHIPPED_FILES = ("pyproject.toml", "constraints.txt", "serve/protocols/samples.json")
SHIPPED_SUFFIXES = (".py", ".yaml", ".html")


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def shipped_files(root: Path) -> list[Path]:
    """The paths (relative to root) a job's working_dir holds: an allowlist, so a file this
    list does not name never leaves the machine, whatever .gitignore says."""
    out = [Path(name) for name in SHIPPED_FILES if _regular(root / name)]
    for top in SHIPPED_DIRS:
        if (root / top).is_symlink():
            continue
        for folder, dirs, files in os.walk(root / top):  # never into a symlinked folder
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                path = Path(folder, name)
                if not name.startswith(".") and path.suffix in SHIPPED_SUFFIXES and _regular(path):
                    out.append(path.relative_to(root))
    return out


@contextmanager
def staged_working_dir(root: Path) -> Iterator[Path]:
    """A temporary copy of `shipped_files(root)`, the folder Ray zips and uploads. Ray names the
    package by a hash of relative paths and contents, so an unchanged tree is uploaded once."""
    with tempfile.TemporaryDirectory(prefix="modresnet-job-") as tmp:
        for rel in shipped_files(root):
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, Path(tmp) / rel)
        yield Path(tmp)


# ------------------------------------------------------------------------------------------
# address, token, client


def resolve_address(address: str | None) -> str:
    address = (
        address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or ""
    ).strip()
    if not address:
        state = local_cluster.load_state()
        if state is None:
            raise JobsError(
                "no cluster address: pass --address http://HEAD:8265, set RAY_ADDRESS, "
                "or start a local cluster with `modresnet cluster up`"
            )
        address = state.jobs_address
    if address in ("auto", "local") or address.startswith("ray://"):
        raise JobsError(
            f"address {address!r} is not a Jobs API address; use the dashboard's "
            f"http://HOST:PORT (port 8265 by default)"
        )
    if "://" not in address:
        address = f"http://{address}"
    try:
        return parse_address(address).url
    except ValueError as err:
        raise JobsError(
            f"address {address!r}: {err}; expected http(s)://HOST[:PORT], e.g. "
            f"http://127.0.0.1:8265"
        ) from None


def resolve_token(address: str) -> str | None:
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None
        except OSError as err:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read ({err.strerror})") from None
    if local_cluster.cluster_at(address) is not None:
        return local_cluster.read_token()
    return None


def check_token_transport(address: str, token: str | None, insecure: bool = False) -> None:
    """The token is a key to the cluster (the Jobs API runs any command): send it only over
    https, or over plain http to this machine (an SSH tunnel or `modresnet cluster up`)."""
    if token is None or insecure:
        return
    parts = parse_address(address)
    if parts.scheme == "https" or is_loopback(parts.host):
        return
    raise JobsError(
        f"refusing to send the cluster token over plain http to {parts.host} (not "
        f"this machine): anyone on the path could read it and run code on the "
        f"cluster. Use https://, or an SSH tunnel (ssh -L 8265:127.0.0.1:8265 HEAD) "
        f"with --address http://127.0.0.1:8265; --insecure-token sends it anyway"
    )


def _check(address: str, token: str | None) -> None:
    """Reach the Jobs API within seconds and turn every failure into one clear line."""
    try:
        status, body = http.get(f"{address}/api/version", token, timeout=CONNECT_TIMEOUT_S)
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise JobsError(
            f"cannot reach the Ray Jobs API at {address}: {reason}. Is the cluster up "
            f"(`modresnet cluster status`) and is this the dashboard port?"
        ) from None
    if status == 401:
        raise JobsError(
            f"{address}: the cluster requires a token (401); set RAY_AUTH_TOKEN or "
            f"RAY_AUTH_TOKEN_PATH"
        )
    if status == 403:
        raise JobsError(
            f"{address}: the cluster rejected the token (403); check "
            f"RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH"
        )
    if status != 200:
        raise JobsError(f"{address}: not a Ray Jobs API (HTTP {status} for /api/version)")
    if b"ray_version" not in body:
        raise JobsError(f"{address}: not a Ray Jobs API (unexpected answer to /api/version)")


def client(address: str | None = None, insecure_token: bool = False) -> Any:
    address = resolve_address(address)
    token = resolve_token(address)
    check_token_transport(address, token, insecure_token)
    _check(address, token)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # JobSubmissionClient lets RAY_ADDRESS/RAY_API_SERVER_ADDRESS override its address
    # argument; ours is already resolved, so they are hidden while the client is built.
    hidden = env_override({"RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None})
    with hidden, _ray_errors(address):
        return jobs_client(address, headers, http.redirect_error)


@contextmanager
def _ray_errors(address: str, job_id: str | None = None) -> Iterator[None]:
    """Ray's failures that a user can fix, by type: a token Ray refused, a job id the Jobs
    API does not know (HTTP 404)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        first = (err.message.splitlines() or ["?"])[0]
        raise JobsError(
            f"{address}: the cluster refused the token ({first}); check "
            f"RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH"
        ) from None
    except JobsHttpError as err:
        if job_id is not None and err.status == 404:
            raise JobsError(f"no job {job_id!r} on {address}; see `modresnet jobs list`") from None
        raise


# ------------------------------------------------------------------------------------------
# submit


def job_env() -> dict[str, str]:
    env = {}
    for name, value in os.environ.items():
        if name in FORWARD_VARS or name.startswith(FORWARD_PREFIXES):
            if is_secret_name(name):
                print(
                    f"note: not forwarding {name} (secrets must not go into the job's "
                    f"runtime_env); set it on the cluster nodes instead",
                    file=sys.stderr,
                )
                continue
            env[name] = value
    return env


def parse_env(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise JobsError(f"--env {item!r}: expected NAME=VALUE")
        if is_secret_name(key):
            raise JobsError(
                f"--env {key}: refusing to put a secret into the job's runtime_env "
                f"(it is readable through the Jobs API); set it on the cluster nodes"
            )
        out[key] = value
    return out


def entrypoint(command: str, args: list[str]) -> str:
    return shlex.join(["python", "-m", "modresnet.cli", command, *args])


def submit(
    command: str,
    args: list[str],
    address: str | None = None,
    submission_id: str | None = None,
    env: dict[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
    insecure_token: bool = False,
) -> str:
    if command not in COMMANDS:
        raise JobsError(f"unknown command {command!r}: choose one of {', '.join(COMMANDS)}")
    if submission_id is not None and not re.match(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", submission_id
    ):
        raise JobsError(f"--submission-id {submission_id!r}: use letters, digits, '.', '_', '-'")
    addr = resolve_address(address)
    c = client(addr, insecure_token)
    import logging

    for name in ("ray", "ray._private.runtime_env", "ray.dashboard"):  # packaging INFO chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    env_vars = {**job_env(), **(env or {})}
    kwargs = {}
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    try:
        with _ray_errors(addr), staged_working_dir(project_root()) as working_dir:
            runtime_env = {"working_dir": str(working_dir), "env_vars": env_vars}
            return str(
                c.submit_job(
                    entrypoint=entrypoint(command, args),
                    submission_id=submission_id,
                    runtime_env=runtime_env,
                    metadata={"modresnet.command": command, "modresnet.client": "cli"},
                    **kwargs,
                )
            )
    except JobsHttpError as err:
        if err.status == 413:
            raise JobsError(
                f"the job's working_dir is too large for the Jobs API (100 MiB); it holds only "
                f"the {', '.join(SHIPPED_SUFFIXES)} files of {', '.join(SHIPPED_DIRS)}: move "
                f"large files out of them"
            ) from None
        if err.status == 400 and submission_id is not None and _exists(c, submission_id):
            raise JobsError(
                f"--submission-id {submission_id!r} is already used on this cluster"
            ) from None
        raise


def _exists(c: Any, job_id: str) -> bool:
    try:
        c.get_job_info(job_id)
    except JobsHttpError as err:
        if err.status == 404:
            return False
        raise
    return True


# ------------------------------------------------------------------------------------------
# list / status / logs / stop


def list_jobs(address: str | None = None, insecure_token: bool = False) -> list[Any]:
    addr = resolve_address(address)
    c = client(addr, insecure_token)
    with _ray_errors(addr):
        jobs = c.list_jobs()
    return sorted(jobs, key=lambda j: j.start_time or 0)


def job_info(job_id: str, address: str | None = None, insecure_token: bool = False) -> Any:
    addr = resolve_address(address)
    c = client(addr, insecure_token)
    with _ray_errors(addr, job_id):
        return c.get_job_info(job_id)


def logs(
    job_id: str,
    address: str | None = None,
    follow: bool = False,
    out=sys.stdout,
    insecure_token: bool = False,
) -> str:
    """Print the job's logs (following them until the job ends); returns its final status."""
    addr = resolve_address(address)
    c = client(addr, insecure_token)
    with _ray_errors(addr, job_id):
        status = str(c.get_job_status(job_id))
    if not follow:
        out.write(c.get_job_logs(job_id))
        out.flush()
        return status

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    deadline = time.monotonic() + 30
    while True:  # the log stream closes when the job ends; its status may lag a little
        status = str(c.get_job_status(job_id))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def stop(
    job_id: str, address: str | None = None, wait_s: float = 60, insecure_token: bool = False
) -> str:
    """Stop a job and wait until it has stopped; returns its final status."""
    addr = resolve_address(address)
    c = client(addr, insecure_token)
    with _ray_errors(addr, job_id):
        c.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while True:
        status = str(c.get_job_status(job_id))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)
