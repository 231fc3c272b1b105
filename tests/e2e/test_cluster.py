"""A real local Ray cluster (head + 2 worker raylets on loopback, token auth on) driven only
through the `modresnet` CLI: submit, follow, stop, authenticate, tear down. No mocks.

One module-scoped cluster (about 30 s to start on 2 cores); MODRESNET_HOME is a temp dir so it
never touches a developer's cluster. The tests run in file order; the last one takes it down.

No secret leaves the nodes' environment (jobs/runtime.py, "Secrets"): `cluster up` runs from a
shell whose environment holds a random sentinel for WANDB_API_KEY, MODRESNET_API_KEY and
AWS_SECRET_ACCESS_KEY, and the shell the train and tune jobs are submitted from holds them too
(the way users submit: `modresnet jobs submit`, W&B on, offline); after those and a serve job,
no sentinel, and not the cluster token, is in anything Ray shows (State API, Jobs API, Serve API)
or in any file under the cluster's temp dir, its state dir or the run folder (`cluster.storage`)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.cluster import CLIENT_VARS, REPO, cli, http, wandb_history
from helpers.ports import free_port

SECRET_VARS = ("WANDB_API_KEY", "MODRESNET_API_KEY", "AWS_SECRET_ACCESS_KEY")
STATE_API = [  # what `ray list ... --detail`, `ray job`, `serve config` and the dashboard read
    "/api/v0/actors?limit=10000&detail=1",
    "/api/v0/tasks?limit=10000&detail=1",
    "/api/v0/jobs?limit=10000&detail=1",
    "/api/v0/workers?limit=10000&detail=1",
    "/api/v0/nodes?limit=10000&detail=1",
    "/api/v0/placement_groups?limit=10000&detail=1",
    "/api/v0/runtime_envs?limit=10000&detail=1",
    "/api/v0/objects?limit=10000&detail=1",
    "/api/jobs/",
    "/api/serve/applications/",
]

# ------------------------------------------------------------------------------------------
# the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("modresnet-home")
    sentinels = {name: f"sentinel-{name.lower()}-{secrets.token_hex(12)}" for name in SECRET_VARS}
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS + SECRET_VARS}
    env.update(MODRESNET_HOME=str(home), RAY_AUTH_MODE="disabled", COLUMNS="200")
    up_env = {**env, "WANDB_MODE": "offline", **sentinels}  # the shell `cluster up` runs from
    started = time.monotonic()
    up = cli("cluster", "up", "--workers", "2", "--cpus-per-node", "1", env=up_env, timeout=360)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        exports = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
        state = json.loads((home / "cluster" / "state.json").read_text())
        token = Path(state["token_path"]).read_text().strip()
        print(f"cluster up in {time.monotonic() - started:.0f}s")
        yield SimpleNamespace(
            home=home,
            env=env,
            up_stdout=up.stdout,
            up_stderr=up.stderr,
            exports=exports,
            state=state,
            token=token,
            address=exports["RAY_ADDRESS"],
            up_env=up_env,
            sentinels=sentinels,
            client_env={**up_env, **exports},  # a user's shell after eval "$(cluster up)"
            storage=tmp_path_factory.mktemp("runs"),  # the jobs' runs, searched for secrets
            jobs={},  # job ids by name, for the Jobs API reads of the secrets test
        )
    finally:
        if (home / "cluster" / "state.json").exists():
            cli("cluster", "down", env=env, timeout=120)


def nodes(c) -> list[dict]:
    status, body = http(f"{c.address}/api/v0/nodes?limit=100&detail=1", c.token)
    assert status == 200
    return [n for n in json.loads(body)["data"]["result"]["result"] if n["state"] == "ALIVE"]


@pytest.mark.ray
def test_cluster_up_prints_client_exports_and_starts_three_nodes(cluster):
    assert cluster.exports["RAY_AUTH_MODE"] == "token"
    assert cluster.exports["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    token_path = Path(cluster.exports["RAY_AUTH_TOKEN_PATH"])
    assert token_path.stat().st_mode & 0o777 == 0o600
    assert str(cluster.home) in str(token_path)
    alive = nodes(cluster)
    assert len(alive) == 3
    head = [n for n in alive if n["is_head_node"]]
    assert len(head) == 1 and head[0]["resources_total"].get("CPU", 0) == 0
    assert sorted(n["resources_total"].get("CPU", 0) for n in alive if not n["is_head_node"]) == [
        1,
        1,
    ]
    status = cli("cluster", "status", env=cluster.env)
    assert status.returncode == 0 and status.stdout.startswith("running"), status.stdout
    # where Prometheus finds each node's metrics: printed, and written as a file_sd target file
    targets = cluster.home / "prometheus" / "targets" / "modresnet-cluster.json"
    (group,) = json.loads(targets.read_text())
    assert group == {
        "targets": [f"127.0.0.1:{port}" for port in cluster.state["metrics_ports"]],
        "labels": {"job": "ray"},
    }
    assert len(set(group["targets"])) == 3
    printed = " ".join(cluster.up_stderr.split())
    assert f"metrics: Ray metrics at {', '.join(group['targets'])}" in printed, printed
    assert f"Prometheus file_sd targets in {targets}" in printed, printed
    for target in group["targets"]:  # each node's metrics agent answers in Prometheus's format
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as r:
                    if b"# TYPE ray_" in r.read():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no Ray metrics at {target}"
            time.sleep(1)
    again = cli("cluster", "up", env=cluster.env)
    assert again.returncode == 2 and "already running" in again.stderr


@pytest.mark.ray
def test_jobs_api_needs_the_token(cluster):
    assert http(f"{cluster.address}/api/jobs/")[0] == 401
    assert http(f"{cluster.address}/api/jobs/", "not-the-token")[0] == 403
    assert http(f"{cluster.address}/api/jobs/", cluster.token)[0] == 200
    wrong = cli(
        "jobs",
        "list",
        "--address",
        cluster.address,
        env={**cluster.env, "RAY_AUTH_TOKEN": "not-the-token"},
    )
    assert wrong.returncode == 2 and "403" in wrong.stderr, wrong.stderr
    ok = cli("jobs", "list", "--address", cluster.address, env=cluster.env)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.ray
def test_train_job_with_wandb_succeeds_logs_every_epoch_and_spreads_over_both_workers(cluster):
    # the user's flow: eval "$(modresnet cluster up)", with W&B on (offline). This job used to
    # end FAILED after training: worker nodes shared the head's Ray temp dir, re-unpacked the
    # job's working_dir there and so deleted the driver's cwd before its last wandb.init.
    env = cluster.client_env
    t0 = time.monotonic()
    sub = cli(
        "jobs",
        "submit",
        "train",
        "--preset",
        "debug",
        "--subset",
        "200",
        "--epochs",
        "2",
        "--workers",
        "2",
        "--storage",
        str(cluster.storage),
        "--name",
        "cluster-train",
        env=env,
    )
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = cluster.jobs["train"] = sub.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"raysubmit_\w+", job_id), sub.stdout
    follow = cli("jobs", "logs", job_id, "--follow", env=env, timeout=400)
    print(f"train job took {time.monotonic() - t0:.0f}s")
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-2000:]
    for epoch in (1, 2):
        assert re.search(rf"epoch\s+{epoch}/2\s+train", follow.stdout), follow.stdout[-4000:]
    status = cli("jobs", "status", job_id, env=env)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    run = cluster.storage / "cluster-train"
    test = json.loads((run / "test.json").read_text())
    # W&B holds every epoch (rank 0, steps 1..2) and then the test result (the driver, step 3)
    history = wandb_history(run / "wandb")
    assert [(h["_step"], h.get("epoch")) for h in history if "val_acc" in h] == [(1, 1), (2, 2)]
    final = [h for h in history if "test_acc" in h]
    assert len(final) == 1 and final[0]["_step"] == 3
    assert final[0]["test_acc"] == pytest.approx(test["test_acc"])

    # the Ray Train workers of this job ran on both worker nodes (1 CPU each), none on the head
    code, body = http(f"{cluster.address}/api/jobs/{job_id}", cluster.token)
    assert code == 200
    info = json.loads(body)
    assert cluster.token not in body.decode()  # no secret in metadata / runtime_env
    assert info["metadata"] == {"modresnet.command": "train", "modresnet.client": "cli"}
    code, body = http(f"{cluster.address}/api/v0/actors?limit=1000&detail=1", cluster.token)
    actors = [
        a
        for a in json.loads(body)["data"]["result"]["result"]
        if a["class_name"] == "RayTrainWorker" and a["job_id"] == info["job_id"]
    ]
    workers = {n["node_id"] for n in nodes(cluster) if not n["is_head_node"]}
    assert {a["node_id"] for a in actors} == workers

    # the job's working_dir, as the head unpacked it, is the allowlist and nothing else
    from jobs.client.submit import shipped_files

    temp_dir = Path(cluster.state["temp_dir"])
    unpacked = list(temp_dir.glob("session_latest/runtime_resources/working_dir_files/*/"))
    assert len(unpacked) == 1, unpacked
    files = {str(p.relative_to(unpacked[0])) for p in unpacked[0].rglob("*") if p.is_file()}
    assert files - {f for f in files if "__pycache__" in f} == {str(p) for p in shipped_files(REPO)}


@pytest.mark.ray
def test_data_parallel_tune_job_with_wandb_succeeds_and_each_trial_logs_every_epoch(cluster):
    """--workers-per-trial 2: each trial is a 2-worker TorchTrainer over both worker nodes (1
    CPU each), so the second trial runs only once the first has given its CPUs back (its
    placement group freed); W&B gets every epoch of every trial through Tune."""
    env = cluster.client_env
    sub = cli(
        "jobs",
        "submit",
        "tune",
        "--preset",
        "debug",
        "--subset",
        "256",
        "--samples",
        "2",
        "--max-epochs",
        "2",
        "--grace-period",
        "2",
        "--concurrent",
        "1",
        "--workers-per-trial",
        "2",
        "--cpus-per-trial",
        "2",
        "--storage",
        str(cluster.storage),
        "--name",
        "cluster-tune",
        env=env,
    )
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = cluster.jobs["tune"] = sub.stdout.strip().splitlines()[-1]
    follow = cli("jobs", "logs", job_id, "--follow", env=env, timeout=400)
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-2000:]
    exp = cluster.storage / "cluster-tune"
    assert (exp / "best-run" / "test.json").exists()
    trials = sorted(exp.glob("run_trial_*"))
    assert len(trials) == 2
    for trial in trials:  # grace period = max epochs: ASHA stops none, both run 2 epochs
        epochs = [h["epoch"] for h in wandb_history(trial / "wandb") if "val_acc" in h]
        assert epochs == [1, 2], (trial.name, epochs)


@pytest.mark.ray
def test_a_running_job_can_be_stopped(cluster, tmp_path):
    sub = cli(
        "jobs",
        "submit",
        "--address",
        cluster.address,
        "train",
        "--local",
        "--preset",
        "debug",
        "--subset",
        "1000",
        "--epochs",
        "100",
        "--storage",
        str(tmp_path),
        env=cluster.env,
    )
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = sub.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = cli("jobs", "status", job_id, "--address", cluster.address, env=cluster.env)
        assert status.returncode == 0, status.stdout + status.stderr
        if "RUNNING" in status.stdout:
            break
        time.sleep(1)
    else:
        pytest.fail("job never reached RUNNING")
    stop = cli("jobs", "stop", job_id, "--address", cluster.address, env=cluster.env)
    assert stop.returncode == 0 and "STOPPED" in stop.stdout, stop.stdout + stop.stderr
    status = cli("jobs", "status", job_id, "--address", cluster.address, env=cluster.env)
    assert status.returncode == 1 and "STOPPED" in status.stdout
    listed = cli("jobs", "list", "--address", cluster.address, env=cluster.env)
    assert job_id in listed.stdout


@pytest.mark.ray
def test_bad_addresses_and_job_ids_fail_fast_and_clearly(cluster):
    env = cluster.env
    cases = [
        (("jobs", "status", "x", "--address", f"http://127.0.0.1:{free_port()}"), "cannot reach"),
        # unroutable (or, behind a sandbox's interceptor, answered by something that is not Ray)
        (
            ("jobs", "list", "--address", "http://10.255.255.1:8265"),
            "cannot reach|not a Ray Jobs API",
        ),
        (("jobs", "list", "--address", "ray://127.0.0.1:10001"), "not a Jobs API address"),
        (("jobs", "list", "--address", "http://bad host:1"), "expected http"),
        (("jobs", "status", "no-such-job", "--address", cluster.address), "no job 'no-such-job'"),
        (("jobs", "logs", "no-such-job", "--address", cluster.address), "no job 'no-such-job'"),
        (("jobs", "stop", "no-such-job", "--address", cluster.address), "no job 'no-such-job'"),
        (
            ("jobs", "submit", "--address", cluster.address, "train", "--no-such-flag"),
            "train: No such option: --no-such-flag",
        ),
        (("jobs", "submit", "--address", cluster.address, "evaluate"), "unknown command"),
    ]
    cases.append((("jobs", "list"), "no cluster address"))  # no address anywhere
    no_home = {**env, "MODRESNET_HOME": str(cluster.home / "none")}

    def run(case):
        args, _ = case
        t0 = time.monotonic()
        r = cli(*args, env=no_home if args == ("jobs", "list") else env, timeout=90)
        return r, time.monotonic() - t0

    # concurrently: each call pays the CLI's import time (torch), slow on 2 busy cores
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, cases))
    for (args, message), (r, took) in zip(cases, results, strict=False):
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert re.search(message, r.stderr), (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert took < 45, (args, took)  # connection checks time out after 5 s; the rest is imports


def in_the_users_shell(c, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """`modresnet ARGS` in a shell that ran `eval "$(modresnet cluster up)"`: bash evaluates
    what `cluster up` printed, so the command gets exactly the environment a user's does."""
    modresnet = str(Path(sys.executable).parent / "modresnet")
    script = 'eval "$1" && shift && exec "$@"'
    return subprocess.run(
        ["bash", "-c", script, "bash", c.up_stdout, modresnet, *args],
        env=c.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def drivers(c) -> dict[str, str]:
    """The cluster's driver jobs (a process that joined it with ray.init): job id -> command."""
    status, body = http(f"{c.address}/api/v0/jobs?limit=1000&detail=1", c.token)
    assert status == 200
    jobs = json.loads(body)["data"]["result"]["result"]
    return {j["job_id"]: j.get("entrypoint") or "" for j in jobs if j.get("type") == "DRIVER"}


@pytest.mark.ray
def test_train_and_tune_run_on_the_cluster_from_the_shell_cluster_up_set_up(cluster, tmp_path):
    """RAY_ADDRESS is the Jobs API's URL there: train (with and without --address auto) and
    tune join that cluster at its GCS with its token; their drivers show on the cluster and
    the Ray Train workers run on its worker nodes. Another Jobs URL is one line, exit 2."""
    tiny = ["--preset", "debug", "--no-wandb", "--storage", str(tmp_path)]
    train = [*tiny, "--workers", "2", "--epochs", "1", "--subset", "500"]
    commands = {
        "shell-train": ["train", *train, "--name", "shell-train"],
        "shell-train-auto": ["train", *train, "--address", "auto", "--name", "shell-train-auto"],
        "shell-tune": ["tune", *tiny, "--subset", "200", "--samples", "1", "--max-epochs", "1"],
    }
    commands["shell-tune"] += ["--name", "shell-tune"]
    workers = {n["node_id"] for n in nodes(cluster) if not n["is_head_node"]}
    for name, args in commands.items():
        before = set(drivers(cluster))
        r = in_the_users_shell(cluster, *args)
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
        run = tmp_path / name / ("best-run" if name == "shell-tune" else "")
        assert (run / "test.json").exists(), (name, r.stdout[-3000:])
        new = {j: cmd for j, cmd in drivers(cluster).items() if j not in before}
        assert [cmd for cmd in new.values() if f"--name {name}" in cmd], (name, new)
        if name.startswith("shell-train"):
            code, body = http(f"{cluster.address}/api/v0/actors?limit=1000&detail=1", cluster.token)
            actors = json.loads(body)["data"]["result"]["result"]
            trainers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
            ran_on = {a["node_id"] for a in trainers if a["job_id"] in new}
            assert ran_on == workers, (name, ran_on)

    foreign = f"http://127.0.0.1:{free_port()}"
    r = in_the_users_shell(
        cluster, "train", *train, "--name", "shell-foreign", "--address", foreign, timeout=120
    )
    assert r.returncode == 2, r.stdout + r.stderr
    line = [x for x in r.stderr.splitlines() if f"--address {foreign} is a Ray Jobs API" in x]
    assert len(line) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"modresnet jobs submit --address {foreign}" in line[0]
    assert line[0].endswith("to use a Ray of this process"), line[0]  # the whole advice


# What Ray 2.60 cannot keep on loopback, and why (jobs/cluster/lifecycle.py binds the rest there):
# - gcs_server, raylet and every Ray worker process (its core worker; the process title is
#   ray::IDLE, ray::<actor>, ...): C++ gRPC servers that always listen on every interface;
# - the dashboard agent, runtime-env agent, Ray Client server and the Prometheus metrics servers
#   of the dashboard (DASHBOARD_METRIC_PORT) and the autoscaler monitor (AUTOSCALER_METRIC_PORT):
#   they bind to loopback only when the node IP is loopback, and `ray start` rewrites
#   --node-ip-address 127.0.0.1 to the machine's outward IP
#   (ray._private.services.resolve_ip_for_localhost), so they get that IP or 0.0.0.0.
# The gRPC services and agents check the cluster token; the metrics servers are read-only.
RAY_CANNOT_BIND_TO_LOOPBACK = (
    "gcs_server",
    "raylet",
    "ray::",
    "default_worker.py",
    "ray.util.client.server",
    "autoscaler/_private/monitor.py",
    "ray/dashboard/dashboard.py",
)


@pytest.mark.ray
def test_the_jobs_api_listens_on_loopback_only_and_other_listeners_are_known(cluster):
    import ipaddress

    import psutil

    from jobs.cluster.procs import own_processes
    from jobs.cluster.state import ClusterState

    ours = {p.pid: p.cmdline for p in own_processes(ClusterState(**cluster.state))}
    listeners = [
        (c.laddr.ip, c.laddr.port, ours[c.pid])
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    assert listeners

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback

    assert not [port for _, port, _ in listeners if port in (44217, 44227)]  # Ray's fixed defaults
    dashboard = [ip for ip, port, _ in listeners if port == cluster.state["dashboard_port"]]
    assert dashboard and all(loopback(ip) for ip in dashboard), dashboard

    def what(cmd: str) -> str:
        names = [n for n in RAY_CANNOT_BIND_TO_LOOPBACK if n in cmd]
        return names[0] if names else cmd[:200]

    exposed = sorted({(ip, port, what(cmd)) for ip, port, cmd in listeners if not loopback(ip)})
    print("listening beyond loopback (Ray 2.60 offers no way to bind these to 127.0.0.1):")
    for ip, port, what in exposed:
        print(f"  {ip}:{port}  {what}")
    unknown = [e for e in exposed if not any(name in e[2] for name in RAY_CANNOT_BIND_TO_LOOPBACK)]
    assert unknown == [], unknown


def _submit(c, *args: str) -> str:
    sub = cli("jobs", "submit", *args, env=c.env)
    assert sub.returncode == 0, sub.stderr[-3000:]
    return sub.stdout.strip().splitlines()[-1]


def _follow(c, job_id: str) -> str:
    follow = cli("jobs", "logs", job_id, "--follow", env=c.env, timeout=400)
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-2000:]
    return follow.stdout


def _hits(where: str, data: bytes, needles: dict[str, str]) -> list[tuple[str, str, str]]:
    """(where, which secret, the text around it) for each secret found in `data`."""
    out = []
    for name, value in needles.items():
        at = data.find(value.encode())
        if at >= 0:
            out.append((where, name, data[max(0, at - 300) : at + 100].decode(errors="replace")))
    return out


@pytest.mark.ray
def test_no_secret_in_ray_state_jobs_serve_or_files_after_train_tune_and_serve(cluster):
    """Last before `cluster down`, after the train job (a Ray Train worker with W&B settings in
    its runtime_env) and the tune job (a W&B logging actor per trial) above, submitted from the
    shell with the secrets: serve the trained run, then search what all of them left."""
    c = SimpleNamespace(**{**vars(cluster), "env": cluster.client_env})
    assert {"train", "tune"} <= set(c.jobs), f"the train and tune job tests ran first: {c.jobs}"
    run, exp = c.storage / "cluster-train", c.storage / "cluster-tune"
    assert sorted((run / "wandb").glob("offline-run-*")), "train logged nothing to W&B"
    assert sorted(exp.glob("run_trial_*/wandb/offline-run-*")), "tune logged nothing to W&B"
    port = free_port()
    served = ["--backend", "torch", "--max-replicas", "1", "--replica-cpus", "0.5"]
    c.jobs["serve"] = _submit(
        c, "--", "serve", str(run), "--address", "auto", "--port", str(port), *served
    )
    assert "serving" in _follow(c, c.jobs["serve"])
    model = f"http://127.0.0.1:{port}/model"
    assert http(model)[0] == 401  # the replicas read MODRESNET_API_KEY from their nodes
    assert http(model, c.sentinels["MODRESNET_API_KEY"])[0] == 200

    needles = {**c.sentinels, "RAY_AUTH_TOKEN": c.token}
    found = []
    for path in STATE_API + [f"/api/jobs/{job}" for job in c.jobs.values()]:
        code, body = http(c.address + path, c.token)
        assert code == 200, (path, body[:300])
        found += _hits(path, body, needles)
    searched = 0
    for root in (Path(c.state["temp_dir"]), c.home / "cluster", c.storage):
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file() or path == Path(c.state["token_path"]):
                continue
            try:
                data = path.read_bytes()
            except OSError:  # a file Ray removed meanwhile
                continue
            searched += 1
            found += _hits(str(path), data, needles)
    assert searched > 100, searched
    assert found == []


@pytest.mark.ray
def test_cluster_down_stops_exactly_its_own_processes(cluster):
    import subprocess

    from jobs.cluster.procs import alive, own_processes, processes
    from jobs.cluster.state import ClusterState

    state = ClusterState(**cluster.state)
    ours = own_processes(state)
    assert len(ours) > 5
    # decoys naming the cluster's temp dir: ours (a user following the raylet's log in another
    # terminal) and another user's (root only: setpriv); neither is the cluster's to stop
    log = f"{state.temp_dir}/session_latest/logs/raylet.out"
    decoys = [subprocess.Popen(["tail", "-f", log], stdout=subprocess.DEVNULL)]
    if os.geteuid() == 0:
        nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
        decoys.append(subprocess.Popen([*nobody, "tail", "-F", log], stderr=subprocess.DEVNULL))
    others = [p for p in processes() if p not in ours and p.pid != os.getpid()]
    try:
        down = cli("cluster", "down", env=cluster.env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert [d.poll() for d in decoys] == [None] * len(decoys)  # both still running
    finally:
        for d in decoys:
            d.kill()
            d.wait()
    assert own_processes(state) == []
    assert not [p for p in ours if alive(p.pid, p.start)]
    assert not any(state.temp_dir + "/" in p.cmdline for p in processes())  # decoys gone too
    # nothing else was touched: our parent shell and any other Ray on the machine live on
    assert alive(os.getppid())
    parent = [p for p in others if p.pid == os.getppid()]
    assert parent and alive(parent[0].pid, parent[0].start)
    assert not (cluster.home / "prometheus" / "targets" / "modresnet-cluster.json").exists()
    status = cli("cluster", "status", env=cluster.env)
    assert status.returncode == 2 and "no cluster" in status.stderr
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{cluster.address}/api/version", timeout=5)
