"""Object storage against moto's S3 server: publishing a real run, then fetching it back."""

from __future__ import annotations

import json

import pytest
from helpers.storage import BUCKET, _objects, moto_s3

from modresnet import storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, a bucket in it, and the environment
    (module-wide, so Ray workers started by subprocesses inherit it)."""
    yield from moto_s3(tmp_path_factory)


def test_publish_then_fetch_roundtrip(s3, tmp_path, debug_config):
    """publish uploads every file (test.json last, .lock and ray/ never); fetch_run downloads
    best/ + top-level files into the cache and reuses it while the weights' sha matches."""
    import torch

    from modresnet import checkpoint
    from modresnet.model import build_model

    run = tmp_path / "run"
    model = build_model(debug_config.model)
    checkpoint.save_model(run / "best", model, debug_config, tuple("abcdefghij"), 1, {})
    (run / "config.yaml").write_text(debug_config.to_yaml())
    (run / "test.json").write_text(json.dumps({"test_acc": 0.5}))
    (run / ".lock").write_text("")
    (run / "ray").mkdir()
    (run / "ray" / "x").write_text("ray's own")
    loc = storage.parse(f"s3://{BUCKET}/unit/run")
    storage.publish(run, loc)
    objs = _objects("unit/run")
    assert {"config.yaml", "test.json", "best/model.safetensors", "best/model.json"} <= set(objs)
    assert ".lock" not in objs and "ray/x" not in objs
    local = storage.fetch_run(loc)
    assert (local / "best" / "model.safetensors").read_bytes() == objs["best/model.safetensors"]
    loaded = checkpoint.load_model(local)  # sha256-checked
    assert torch.equal(
        next(iter(loaded.model.state_dict().values())), next(iter(model.state_dict().values()))
    )
    assert storage.fetch_run(loc) == local  # cached
    # new weights under the same URI: a new cache entry, never the stale one
    torch.nn.init.zeros_(next(model.parameters()))
    checkpoint.save_model(run / "best", model, debug_config, tuple("abcdefghij"), 2, {})
    storage.publish(run, loc)
    assert storage.fetch_run(loc) != local
