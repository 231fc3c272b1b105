"""The Dockerfile a cluster image is built from, checked without a cluster: pinned Ray, no
baked secret."""

from __future__ import annotations

import re

from helpers.cluster import REPO


def test_dockerfile_pins_ray_and_bakes_no_secret():
    text = (REPO / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=rayproject/ray:2\.60\.0-py311-cpu$", text, re.M)
    assert "ray[default,train,tune,serve]==2.60.0" in text
    assert "RAY_AUTH_MODE=token" in text
    assert not re.search(r"RAY_AUTH_TOKEN=|WANDB_API_KEY=|MODRESNET_API_KEY=", text)
