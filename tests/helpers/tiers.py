"""The three test tiers, one folder each, and the rule that keeps a test in its own: what a
test needs (the data set, Ray) decides its tier, and its folder must say the same."""

from __future__ import annotations

from pathlib import PurePath

DATA_FIXTURES = frozenset({"data_dir", "small_cifar", "debug_config"})
TIERS = ("unit", "integration", "e2e")


def tier_of(path: PurePath, tests_root: PurePath) -> str | None:
    """The tier folder a test file sits in under tests/, or None outside the three."""
    parts = PurePath(path).relative_to(tests_root).parts
    return parts[0] if parts and parts[0] in TIERS else None


def misplaced(tier: str | None, fixtures: set[str], ray: bool) -> str | None:
    """Why a test does not belong in its tier folder, with where it goes; None if it does."""
    data = sorted(DATA_FIXTURES & fixtures)
    if tier == "unit" and ray:
        return "starts Ray (the `ray` marker): move it to tests/e2e/"
    if tier == "unit" and data:
        return f"needs the data set ({', '.join(data)}): move it to tests/integration/"
    if tier == "integration" and ray:
        return "starts Ray (the `ray` marker): move it to tests/e2e/"
    if tier == "integration" and not data:
        return "needs neither Ray nor the data set: move it to tests/unit/"
    if tier == "e2e" and not ray:
        return "starts no Ray (no `ray` marker): mark it, or move it to tests/integration/ or unit/"
    return None
