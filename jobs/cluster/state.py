"""A local cluster's identity on disk: where it lives ($MODRESNET_HOME/cluster), its
state.json (ports, addresses, the processes it started) and its token. Read by `modresnet
cluster`, by the Jobs client, which finds the local cluster's address and token here, and by
the Ray runtime, which recognises the cluster's Jobs API URL (`cluster_at`) and joins its GCS.

state.json is read back strictly (types checked, temp_dir proven to be a folder `up` made),
because `down` signals the processes and removes the folder it names."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobs.client.http import parse_address
from modresnet.errors import UserError
from modresnet.files import atomic_write_text

# Each cluster's Ray temp dir: short (Ray's unix socket paths must stay under 108 bytes) and
# made by tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=TEMP_ROOT), whose random part is 8 of [a-z0-9_]
TEMP_ROOT = Path("/tmp")
TEMP_PREFIX = "mrray-"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9_]{8}")


class ClusterError(UserError):
    """A user-fixable problem with the local cluster (printed as one line, exit 2)."""


def modresnet_home() -> Path:
    return Path(os.environ.get("MODRESNET_HOME") or "~/.modresnet").expanduser()


def state_dir() -> Path:
    return modresnet_home() / "cluster"


@dataclass
class ClusterState:
    home: str
    temp_dir: str
    token_path: str
    node_ip: str
    gcs_port: int
    dashboard_port: int
    client_port: int
    workers: int
    cpus_per_node: float
    head_cpus: float
    sessions: list[int] = field(default_factory=list)  # sids of our `ray start` processes
    procs: list[tuple[int, int]] = field(default_factory=list)  # (pid, start) of what they left
    started_at: float = 0.0
    boot_id: str = ""  # pids and start times mean something only within this boot
    leaders: list[tuple[int, int]] = field(default_factory=list)  # (pid = sid, start): ray start
    metrics_ports: list[int] = field(default_factory=list)  # each node's Prometheus export port

    @property
    def metrics_targets(self) -> list[str]:
        """HOST:PORT of each node's metrics export (Prometheus targets), head first."""
        return [f"{self.node_ip}:{port}" for port in self.metrics_ports]

    @property
    def gcs_address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

    @property
    def jobs_address(self) -> str:
        return f"http://{self.node_ip}:{self.dashboard_port}"

    def exports(self) -> dict[str, str]:
        """The environment a client needs (Jobs API / `ray job` / `modresnet jobs`)."""
        return {
            "RAY_ADDRESS": self.jobs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
        }


def state_file() -> Path:
    return state_dir() / "state.json"


def token_file() -> Path:
    return state_dir() / "auth_token"


def check_temp_dir(temp_dir: str) -> str | None:
    """Why `temp_dir` is not a Ray temp dir `up` made (None when it is, or is gone): it must be
    TEMP_ROOT/mrray-XXXXXXXX and a real folder (no symlink) owned by us."""
    path = Path(temp_dir)
    if path.parent != TEMP_ROOT or not _TEMP_NAME.fullmatch(path.name):
        return f"temp_dir {temp_dir!r} is not {TEMP_ROOT}/{TEMP_PREFIX}XXXXXXXX"
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"temp_dir {temp_dir} is not a folder (a symlink or a file)"
    if st.st_uid != os.geteuid():
        return f"temp_dir {temp_dir} is owned by uid {st.st_uid}, not by us"
    return None


def load_state() -> ClusterState | None:
    import pydantic

    try:
        text = state_file().read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ClusterError(f"{state_file()}: cannot read ({err.strerror})") from None
    try:
        state = pydantic.TypeAdapter(ClusterState).validate_json(text, strict=True)
    except pydantic.ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise ClusterError(
            f"{state_file()} is not a cluster state ({where}: {first['msg']}); stop what it "
            f"started by hand and delete it"
        ) from None
    problem = check_temp_dir(state.temp_dir)
    if problem:
        raise ClusterError(
            f"{state_file()}: {problem}, so `cluster` will not touch it; stop what it started "
            f"by hand and delete the state file"
        )
    return state


def save_state(state: ClusterState) -> None:
    atomic_write_text(state_file(), json.dumps(asdict(state), indent=2))


def cluster_at(url: str) -> ClusterState | None:
    """The cluster of this MODRESNET_HOME when its Jobs API is at `url` (the RAY_ADDRESS that
    `cluster up` exports; `localhost` for 127.0.0.1 too), else None."""
    try:
        address = parse_address(url)
    except ValueError:
        return None
    state = load_state()
    if state is None:
        return None
    host = "127.0.0.1" if address.host == "localhost" else address.host
    if (address.scheme, host, address.port) != ("http", state.node_ip, state.dashboard_port):
        return None
    return state


def read_token() -> str | None:
    """The local cluster's token, if there is one in this MODRESNET_HOME."""
    state = load_state()
    if state is None:
        return None
    try:
        return Path(state.token_path).read_text().strip() or None
    except OSError:
        return None
