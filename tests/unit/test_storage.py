"""Object storage (`--storage s3://...`) without Ray: URL parsing, one-line CLI errors, an
unwritable bucket, against moto's S3 server on 127.0.0.1. No mocks: every byte goes over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.storage import BUCKET, _cli, moto_s3

from modresnet import storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, a bucket in it, and the environment
    (module-wide, so Ray workers started by subprocesses inherit it)."""
    yield from moto_s3(tmp_path_factory)


def test_parse_schemes_and_path_mangled_forms():
    loc = storage.parse("s3://bkt/a/b/")
    assert isinstance(loc, storage.Location) and loc.uri == "s3://bkt/a/b"
    # typer hands a Path option over; pathlib folds '//' to '/': still the same location
    assert storage.parse(Path("s3://bkt/a/b")) == loc
    assert storage.parse("gs://bkt/x").uri == "gs://bkt/x"
    assert (
        storage.parse("s3://bkt/p?region=eu-west-1").join("run").uri
        == "s3://bkt/p/run?region=eu-west-1"
    )
    assert storage.parse("file:///tmp/runs") == Path("/tmp/runs")
    assert storage.parse("runs/x") == Path("runs/x")
    with pytest.raises(storage.StorageError, match="unsupported storage scheme ftp://"):
        storage.parse("ftp://host/x")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.parse("s3://")


def test_cli_errors_are_one_line(s3, tmp_path):
    bad = _cli("train", "--preset", "debug", "--storage", "ftp://x/y", "--no-wandb")
    assert bad.returncode == 2 and "unsupported storage scheme ftp://" in bad.stderr
    assert "Traceback" not in bad.stderr
    local = _cli("train", "--preset", "debug", "--local", "--storage", f"s3://{BUCKET}/x")
    assert local.returncode == 2 and "drop --local" in local.stderr
    missing = _cli("evaluate", f"s3://{BUCKET}/no-such-run")
    assert missing.returncode == 2 and "not a modresnet run" in missing.stderr
    assert "Traceback" not in missing.stderr
    served = _cli("serve", f"s3://{BUCKET}/no-such-run")  # serve fetches at the CLI edge too
    assert served.returncode == 2 and "not a modresnet run" in served.stderr


def test_unwritable_bucket_names_the_fix(s3):
    loc = storage.parse("s3://no-such-bucket-here/p")
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        storage.check_writable(loc)
    assert "AWS_ENDPOINT_URL" in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - start < 30
