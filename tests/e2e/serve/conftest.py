"""The Serve app end to end: a real Ray Serve on a free loopback port, real CIFAR-10 test
images as PNG, real HTTP. One package-scoped Ray + Serve instance (this conftest) holds two apps:

* `modresnet` at /        ONNX backend, autoscaling 1..3, batching, 1 MiB body limit, 3 s body
                          read timeout;
* `secure`    at /secure  torch backend, 1 replica, API key required (from an env var), tiny
                          queue;

each with its health app (`modresnet-health` at /v2/health, `secure-health` at
/secure/v2/health). Hostile input, decoding bounds and v2 clients are tested in-process in
test_serve_hostile.py and test_serve_v2.py (seconds, no Ray).
"""

from __future__ import annotations

import pytest

from modresnet.images import encode_png
from modresnet.inference import Predictor

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from helpers.serve import (  # noqa: E402
    N_IMAGES,
    serve_two_apps,
    train_two_runs,
)


@pytest.fixture(scope="package")
def runs(tmp_path_factory, data_dir):
    """A real (tiny) training run, and a second checkpoint with other weights to roll over to."""
    return train_two_runs(tmp_path_factory, data_dir)


@pytest.fixture(scope="package")
def images(small_cifar):
    x, y = small_cifar.test.x[:N_IMAGES], small_cifar.test.y[:N_IMAGES]
    return x, y, [encode_png(img) for img in x], small_cifar.classes


@pytest.fixture(scope="package")
def server(runs):
    """One Ray + Serve instance with both apps, shared by every test in this package."""
    yield from serve_two_apps(runs)


@pytest.fixture(scope="package")
def predictor(runs):
    return Predictor.from_path(runs[0])
