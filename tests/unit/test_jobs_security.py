"""Credentials stay where they belong: the Jobs client's token never travels over plain http to
another machine (unless --insecure-token), goes only to an address parsed strictly (a DNS name
or an IP literal), never follows a redirect (the Jobs client's and `modresnet cluster`'s
requests alike), and `tune --resume` refuses an experiment folder someone else could have
written (it unpickles Ray's state).

Real HTTP servers on this machine record what reaches them; no mocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.recorder import Recorder

from jobs.client import http, submit
from modresnet.ownership import UnsafeStorageError, check_private_storage

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-the-test"


def non_loopback_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
        ip = s.getsockname()[0]
    if ip.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    return ip


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modresnet.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_token_goes_over_plain_http_only_to_loopback(tmp_path, monkeypatch):
    server = Recorder("0.0.0.0", lambda path: (404, {}, b"not ray"))
    address = server.url.replace("0.0.0.0", non_loopback_ip())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_TOKEN=TOKEN, MODRESNET_HOME=str(tmp_path))
    try:
        refused = cli("jobs", "list", "--address", address, env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refusing to send the cluster token over plain http" in refused.stderr
        assert "--insecure-token" in refused.stderr and "Traceback" not in refused.stderr
        assert server.seen == []  # refused before connecting

        monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
        monkeypatch.setenv("MODRESNET_HOME", str(tmp_path))
        with pytest.raises(submit.JobsError, match="not a Ray Jobs API"):
            submit.list_jobs(address, insecure_token=True)  # the explicit override sends it
        assert server.seen == [("/api/version", f"Bearer {TOKEN}")]
        # loopback over http is fine (an SSH tunnel, or `modresnet cluster up`)
        with pytest.raises(submit.JobsError, match="not a Ray Jobs API"):
            submit.list_jobs(server.url.replace("0.0.0.0", "127.0.0.1"))
        assert server.seen[-1] == ("/api/version", f"Bearer {TOKEN}")
        submit.check_token_transport("https://ray.example.com:8265", TOKEN)  # https: fine
    finally:
        server.close()


def test_cluster_requests_with_the_token_follow_no_redirect(tmp_path):
    """`modresnet cluster up|status` poll their dashboard with the token: a redirect there (a
    port since taken by something else) is an error naming where it pointed, never followed."""
    from jobs.cluster.lifecycle import alive_nodes
    from jobs.cluster.state import ClusterState

    elsewhere = Recorder("127.0.0.1", lambda path: (200, {}, b"{}"))
    server = Recorder("127.0.0.1", lambda path: (302, {"Location": f"{elsewhere.url}{path}"}, b""))
    state = ClusterState(
        home=str(tmp_path),
        temp_dir="/tmp/mrray-gone0000",
        token_path=str(tmp_path / "auth_token"),
        node_ip="127.0.0.1",
        gcs_port=1,
        dashboard_port=server.server.server_address[1],
        client_port=3,
        workers=0,
        cpus_per_node=1,
        head_cpus=0,
    )
    try:
        with pytest.raises(http.RedirectError, match=rf"redirect \(HTTP 302\) to {elsewhere.url}"):
            alive_nodes(state, TOKEN)
        assert server.seen == [("/api/v0/nodes?limit=1000&detail=1", f"Bearer {TOKEN}")]
        assert elsewhere.seen == []
    finally:
        server.close()
        elsewhere.close()


def test_loopback_is_localhost_or_a_literal_loopback_ip_and_nothing_else():
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.255.3.4", "::1", "[::1]"):
        assert http.is_loopback(host), host
    others = ("evil.localhost", "localhost.evil.example", "127.0.0.1.nip.io", "::ffff:127.0.0.1")
    for host in others:
        assert not http.is_loopback(host), host  # names resolve anywhere; ::ffff: is not ::1


@pytest.mark.parametrize(
    "address, problem",
    [
        ("http://evil.example\\@127.0.0.1:8265", "not allowed"),  # requests: evil.example
        ("http://user@127.0.0.1:8265", "not allowed"),
        ("http://127.0.0.1:8265@evil.example", "not allowed"),
        ("http://evil.example/@127.0.0.1:8265", "not allowed"),
        ("http://127.0.0.1:8265/evil", "not a scheme, host and port alone"),
        ("http://evil.example?@127.0.0.1:8265", "not allowed"),
        ("http://evil.example#@127.0.0.1:8265", "not allowed"),
        ("http://127.0.0.1 :8265", "not allowed"),
        ("http://127.0.0.1\n:8265", "not allowed"),
        ("http://[::1%25lo]:8265", "not allowed"),
        ("http://127.1:8265", "neither a DNS name nor a dotted-quad"),  # 127.0.0.1 to inet_aton
        ("http://2130706433:8265", "neither a DNS name nor a dotted-quad"),
        ("http://0x7f.0.0.1:8265", "neither a DNS name nor a dotted-quad"),
        ("http://127.000.000.001:8265", "neither a DNS name nor a dotted-quad"),
        ("http://-evil.example:8265", "neither a DNS name nor an IP"),
        ("http://ev!l.example:8265", "not allowed"),
        ("http://\u0661\u0662\u0667.0.0.1:8265", "not allowed"),  # Arabic-Indic digits
        ("http://127.0.0.1:99999", "not in 1..65535"),
        ("http://[1::2::3]:8265", "not an IPv6 address"),
    ],
)
def test_addresses_are_parsed_strictly(address, problem):
    with pytest.raises(submit.JobsError, match=problem) as err:
        submit.resolve_address(address)
    assert "expected http(s)://HOST[:PORT]" in str(err.value) and "\n" not in str(err.value)


def test_a_url_two_http_clients_read_differently_gets_no_token(tmp_path):
    """`http://evil.example\\@127.0.0.1:PORT`: urllib (and the token-transport check) saw the
    host 127.0.0.1, requests connects to evil.example. Refused before anything is sent."""
    server = Recorder("127.0.0.1", lambda path: (404, {}, b"not ray"))
    port = server.server.server_address[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_TOKEN=TOKEN, MODRESNET_HOME=str(tmp_path))
    try:
        r = cli("jobs", "list", "--address", f"http://evil.example\\@127.0.0.1:{port}", env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "not allowed (no userinfo" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert server.seen == []
    finally:
        server.close()


def test_well_formed_addresses_are_kept():
    assert submit.resolve_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert submit.resolve_address("https://Ray.Example.com/") == "https://ray.example.com"
    assert submit.resolve_address("http://[::1]:8265") == "http://[::1]:8265"
    assert submit.resolve_address("http://localhost.:8265") == "http://localhost:8265"
    submit.check_token_transport("http://[::1]:8265", TOKEN)  # loopback: fine
    with pytest.raises(submit.JobsError, match="refusing to send the cluster token"):
        submit.check_token_transport("http://evil.localhost:8265", TOKEN)


def _experiment(root: Path) -> Path:
    exp = root / "search"
    (exp / "trial_0").mkdir(parents=True)
    (exp / "modresnet-tune.json").write_text(
        json.dumps(
            {
                "name": "search",
                "storage": str(root),
                "samples": 2,
                "max_epochs": 1,
                "grace_period": 1,
                "reduction_factor": 2,
            }
        )
    )
    (exp / "tuner.pkl").write_bytes(b"pickled state")
    (exp / "trial_0" / "params.pkl").write_bytes(b"pickled params")
    for p in (root, exp, exp / "trial_0"):
        p.chmod(0o755)
    for p in (exp / "tuner.pkl", exp / "trial_0" / "params.pkl"):
        p.chmod(0o644)
    return exp


def test_tune_resume_refuses_an_experiment_others_could_have_written(tmp_path):
    root = tmp_path / "storage"
    exp = _experiment(root)
    check_private_storage(exp)  # ours, writable only by us: fine

    (exp / "tuner.pkl").chmod(0o666)  # through the CLI: the tune driver refuses, exit 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    r = cli("tune", "--resume", "search", "--storage", str(root), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{exp / 'tuner.pkl'} is writable by others (mode 666)" in r.stderr
    assert "could run code as you" in r.stderr and "Traceback" not in r.stderr
    (exp / "tuner.pkl").chmod(0o644)

    (exp / "trial_0").chmod(0o775)
    with pytest.raises(UnsafeStorageError, match="trial_0 is writable by its group"):
        check_private_storage(exp)
    (exp / "trial_0").chmod(0o755)

    root.chmod(0o777)  # anyone could swap the experiment folder itself
    with pytest.raises(UnsafeStorageError, match=r"storage is writable by others"):
        check_private_storage(exp)
    root.chmod(0o1777)  # sticky, as /tmp: others cannot rename what is ours
    check_private_storage(exp)
    root.chmod(0o755)

    (exp / "escape").symlink_to(tmp_path)
    with pytest.raises(UnsafeStorageError, match="is a symlink to .* outside the experiment"):
        check_private_storage(exp)
    (exp / "escape").unlink()

    if os.geteuid() == 0:  # chown needs root; another user's file in our experiment
        os.chown(exp / "trial_0" / "params.pkl", 65534, 65534)
        with pytest.raises(UnsafeStorageError, match="params.pkl is owned by uid 65534"):
            check_private_storage(exp)
