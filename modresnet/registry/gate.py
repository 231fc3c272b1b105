"""The rule a version passes before it may become `candidate` and take traffic: scored on the
same test set (md5 of the exact tensors) as the champion, and no worse than the champion's
test accuracy minus a tolerance. Pure: the registry supplies both versions."""

from __future__ import annotations

from typing import Protocol

from modresnet.registry.refs import RegistryError

GATE_TOLERANCE = 0.005  # half a point of test accuracy


class GateError(RegistryError):
    """A version the gate refuses; the line names both figures and the tolerance."""


class Scored(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def test_acc(self) -> float | None: ...
    @property
    def test_md5(self) -> str | None: ...


def check(candidate: Scored, champion: Scored | None, tolerance: float = GATE_TOLERANCE) -> None:
    """Raise GateError unless `candidate` may stand beside `champion` (None: nothing to beat)."""
    if not 0 <= tolerance < 1:
        raise GateError(f"--tolerance {tolerance:g}: use a share of accuracy in [0, 1), e.g. 0.005")
    if candidate.test_acc is None or candidate.test_md5 is None:
        raise GateError(
            f"{candidate.label} records no test accuracy with its test set's md5; register "
            f"a finished run (its test.json records both)"
        )
    if champion is None or champion.label == candidate.label:
        return
    if champion.test_acc is None or champion.test_md5 is None:
        raise GateError(
            f"champion {champion.label} records no test accuracy with its test set's md5, so "
            f"{candidate.label} cannot be compared with it; make a version that does champion"
        )
    if candidate.test_md5 != champion.test_md5:
        raise GateError(
            f"{candidate.label} was evaluated on another test set (md5 {candidate.test_md5} vs "
            f"{champion.test_md5} of champion {champion.label}); evaluate both on the same test "
            f"set (the same data.test_subset and split_seed)"
        )
    floor = champion.test_acc - tolerance
    if candidate.test_acc < floor:
        raise GateError(
            f"{candidate.label} test accuracy {100 * candidate.test_acc:.2f}% is below champion "
            f"{champion.label}'s {100 * champion.test_acc:.2f}% minus the tolerance "
            f"{100 * tolerance:.2f} points ({100 * floor:.2f}%); register a better model, or "
            f"pass a larger --tolerance"
        )
