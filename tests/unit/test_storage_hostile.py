"""A bucket that lies: runs whose model.json, object keys and names are crafted to name paths
outside the cache, on a real moto S3 server. HOME is a sandbox full of canary files; every
canary must survive, nothing may be written outside the cache, and every command must end in
one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.storage import BUCKET, CLI, REPO, moto_s3

from modresnet import names, storage
from modresnet.errors import UserError

SHA = "ab" * 32


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from moto_s3(tmp_path_factory)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A sandboxed HOME whose default cache (~/.cache/modresnet) is where fetches land, with
    canaries in the home, beside the cache and at the sandbox's root."""
    sandbox = tmp_path / "sandbox"
    home = sandbox / "home"
    canaries = {
        home / ".ssh" / "id_ed25519": "private key",
        home / "notes.txt": "notes",
        home / ".cache" / "other-tool" / "data": "other cache",
        home / ".cache" / "modresnet" / "keep.txt": "beside the remote-runs cache",
        sandbox / "outside.txt": "outside home",
    }
    for path, text in canaries.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MODRESNET_CACHE", raising=False)
    before = _tree(sandbox)
    yield home
    after = _tree(sandbox)
    cache = home / ".cache" / "modresnet" / "remote-runs"
    assert all(p.read_text() == text for p, text in canaries.items()), "a canary was changed"
    assert {p for p in before if p not in after} == set(), "something outside was removed"
    written = {p for p in after if before.get(p) != after[p]}
    assert all(cache in p.parents for p in written), f"written outside the cache: {written}"


def _tree(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _put(prefix: str, objects: dict[str, bytes]) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=body)
    return f"s3://{BUCKET}/{prefix}"


def _meta(sha: object) -> bytes:
    return json.dumps({"format": "modresnet-checkpoint", "version": 1, "sha256": sha}).encode()


def _run(sha: object, **extra: bytes) -> dict[str, bytes]:
    return {"best/model.safetensors": b"weights", "best/model.json": _meta(sha), **extra}


HOSTILE_SHA = {
    "traversal": "/../../../..",
    "absolute": "/etc/passwd" + "0" * 53,
    "number": 12345,
    "null": None,
    "non-hex": "zz" * 32,
    "uppercase": "AB" * 32,
    "very-long": "a" * 100_000,
    "list": ["../.."],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SHA))
def test_a_forged_sha256_names_no_path(s3, home, case):
    uri = _put(f"sha-{case}", _run(HOSTILE_SHA[case]))
    with pytest.raises(
        names.UnsafeNameError, match=r"best/model\.json: sha256: .* is not a sha256"
    ):
        storage.fetch_run(storage.parse(uri))


HOSTILE_KEYS = {
    "dot-dot": "..",
    "dot": "best/.",
    "dot-dot-in-best": "best/..",
    "backslash": "..\\..\\notes.txt",
    "percent": "%2e%2e",
    "space": "a b",
    "very-long": "x" * 300,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_KEYS))
def test_a_crafted_object_key_names_no_path(s3, home, case):
    uri = _put(f"key-{case}", _run(SHA, **{HOSTILE_KEYS[case]: b"planted"}))
    with pytest.raises(UserError) as err:
        storage.fetch_run(storage.parse(uri))
    assert "\n" not in str(err.value)
    assert not list((home / ".cache" / "modresnet" / "remote-runs").glob(f"key-{case}-*"))


def test_an_oversized_sidecar_is_refused_unread(s3, home):
    uri = _put("big-meta", _run(SHA) | {"best/model.json": b" " * (storage.MAX_META + 1)})
    with pytest.raises(names.UnsafeNameError, match="is not a sha256"):
        storage.fetch_run(storage.parse(uri))


def test_a_sidecar_swapped_during_the_download_is_refused(s3, home, monkeypatch):
    """The entry is keyed by the sha read first; the copy must carry that same sha."""
    uri = _put("swapped", _run(SHA))
    first = storage._remote_sha
    calls = []

    def swap_after_first_read(*args):
        calls.append(args)
        sha = first(*args)
        if len(calls) == 1:
            _put("swapped", {"best/model.json": _meta("cd" * 32)})
        return sha

    monkeypatch.setattr(storage, "_remote_sha", swap_after_first_read)
    with pytest.raises(storage.StorageError, match="changed while downloading"):
        storage.fetch_run(storage.parse(uri))
    assert not list((home / ".cache" / "modresnet" / "remote-runs").glob("swapped-*"))


def test_a_foreign_folder_at_the_cache_entry_is_left_alone(s3, home):
    """Fetching never removes what it did not create: a folder already at the entry's path
    that is not a complete entry stays, and the user is told to move it."""
    uri = _put("occupied", _run(SHA))
    entry = storage._cache_entry(storage.parse(uri), SHA)
    entry.mkdir(parents=True)
    (entry / "mine.txt").write_text("not the cache's")
    with pytest.raises(storage.StorageError, match="is not a complete modresnet cache entry"):
        storage.fetch_run(storage.parse(uri))
    assert (entry / "mine.txt").read_text() == "not the cache's"
    (entry / "mine.txt").unlink()
    entry.rmdir()
    fetched = storage.fetch_run(storage.parse(uri))  # and a clean fetch then works
    assert fetched == entry and (fetched / "best" / "model.safetensors").read_bytes() == b"weights"


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MODRESNET_CACHE")}
    env |= {"HOME": str(home), "MPLCONFIGDIR": str(home.parent.parent / "matplotlib")}
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_commands_refuse_a_hostile_run_in_one_line(s3, home, tmp_path):
    """evaluate, predict and serve fetch at the CLI edge: the run that emptied $HOME now
    stops there, exit 2, one line naming the field."""
    uri = _put("empties-home", _run("/../../../.."))
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    for args in (["evaluate", uri], ["predict", "--checkpoint", uri, str(image)], ["serve", uri]):
        result = _cli(home, *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "best/model.json: sha256" in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_run_and_experiment_names_are_checked_before_use(home):
    for bad, command in (
        ("../../x", ["train", "--preset", "debug", "--storage", f"s3://{BUCKET}/p"]),
        ("..", ["train", "--preset", "debug", "--local"]),
        ("/abs", ["tune", "--preset", "debug"]),
        ("x" * 200, ["tune", "--resume"]),
    ):
        flag = [] if command[-1] == "--resume" else ["--name"]
        result = _cli(home, *command, *flag, bad, "--no-wandb")
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "is not a valid name" in lines[0], result.stderr


def test_the_name_rule():
    for good in ("paper-20261201-101010", "tune-demo", "a.b_c-1", "..a", "x" * names.MAX_NAME):
        assert names.name(good, "--name") == good
    bad_names = ("", ".", "..", "a/b", "/abs", "a\\b", "a b", "\u00e9", "a\x00b", 5, None)
    for bad in (*bad_names, "x" * (names.MAX_NAME + 1)):
        with pytest.raises(names.UnsafeNameError):
            names.name(bad, "--name")
    assert names.relative_key("best/model.json", "k").parts == ("best", "model.json")
    for bad_key in ("", "/abs", "a//b", "a/../b", "a/./b", "a/"):
        with pytest.raises(names.UnsafeNameError):
            names.relative_key(bad_key, "k")
