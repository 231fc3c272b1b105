"""The tier folders cannot drift: a test whose needs (the data set, Ray) disagree with its
folder is named at collection, with the folder it belongs in."""

from __future__ import annotations

from pathlib import PurePath

import pytest
from helpers.tiers import misplaced, tier_of

ROOT = PurePath("/repo/tests")


@pytest.mark.parametrize(
    ("path", "tier"),
    [
        ("unit/test_model.py", "unit"),
        ("integration/test_engine.py", "integration"),
        ("e2e/serve/test_serve_http.py", "e2e"),
        ("test_loose.py", None),
        ("helpers/test_like.py", None),
    ],
)
def test_the_tier_is_the_first_folder_under_tests(path, tier):
    assert tier_of(ROOT / path, ROOT) == tier


@pytest.mark.parametrize(
    ("tier", "fixtures", "ray", "goes_to"),
    [
        ("unit", {"tmp_path", "small_cifar"}, False, "tests/integration/"),
        ("unit", {"data_dir"}, True, "tests/e2e/"),
        ("unit", set(), True, "tests/e2e/"),
        ("integration", {"debug_config"}, True, "tests/e2e/"),
        ("integration", {"tmp_path"}, False, "tests/unit/"),
        ("e2e", {"data_dir"}, False, "tests/integration/"),
    ],
)
def test_a_test_in_the_wrong_folder_is_named_with_where_it_goes(tier, fixtures, ray, goes_to):
    why = misplaced(tier, fixtures, ray)
    assert why is not None and goes_to in why


@pytest.mark.parametrize(
    ("tier", "fixtures", "ray"),
    [("unit", {"tmp_path"}, False), ("integration", {"data_dir"}, False), ("e2e", set(), True)],
)
def test_a_test_in_its_folder_passes(tier, fixtures, ray):
    assert misplaced(tier, fixtures, ray) is None


def test_every_collected_test_carries_its_folders_tier(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("fast") is not None
