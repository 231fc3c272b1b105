"""A local cluster's identity on disk: where it lives ($MODRESNET_HOME/cluster), its
state.json (ports, addresses, the processes it started) and its token. Read by `modresnet
cluster` and by the Jobs client, which finds the local cluster's address and token here."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modresnet.errors import UserError


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
    procs: list[list[int]] = field(default_factory=list)  # [pid, start] of what they left
    started_at: float = 0.0
    boot_id: str = ""  # pids and start times mean something only within this boot
    leaders: list[list[int]] = field(default_factory=list)  # [pid (= sid), start] of `ray start`

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


def load_state() -> ClusterState | None:
    try:
        return ClusterState(**json.loads(state_file().read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise ClusterError(f"{state_file()} is unreadable ({err}); delete it by hand") from None


def save_state(state: ClusterState) -> None:
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(state_file())


def read_token() -> str | None:
    """The local cluster's token, if there is one in this MODRESNET_HOME."""
    state = load_state()
    if state is None:
        return None
    try:
        return Path(state.token_path).read_text().strip() or None
    except OSError:
        return None
