"""What a search says when its trials failed (jobs/tune/results.py `TuneOutcome.failure`): the
count and the first failed trial's own error line, never its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

results = pytest.importorskip("jobs.tune.results")

# what Tune holds for a data-parallel trial whose workers found no data: a RayTaskError's text
RAY_ERROR = """ray::ImplicitFunc.train() (pid=26406, ip=192.0.2.2, repr=run_trial)
  File "/tmp/ray/session/runtime_resources/working_dir_files/pkg/jobs/tune/trial.py", line 103
    ).fit()
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
  File "/tmp/ray/.../modresnet/data.py", line 131, in _download
    raise DataError(
modresnet.data.DataError: CIFAR-10 is not at /root/.cache/cifar-10-batches-py; use --data-dir DIR
"""


def test_the_failure_names_how_many_failed_and_the_first_ones_own_error():
    line = results._last_line(RuntimeError(RAY_ERROR))
    assert line.startswith("modresnet.data.DataError: CIFAR-10 is not at") and "--data-dir" in line
    outcome = results.TuneOutcome(
        Path("exp"), [], False, errors={"6a3ac_00000": line, "6a3ac_00001": line}, trials=2
    )
    assert outcome.failure() == f"2 of 2 trials failed; trial 6a3ac_00000: {line}"
    assert outcome.all_failed
    interrupted = results.TuneOutcome(Path("exp"), [], True, errors={"a": line}, trials=2)
    assert not interrupted.all_failed  # a resume may still help there
    assert results.TuneOutcome(Path("exp"), [], False, trials=2).failure() is None


def test_an_error_without_text_is_named_by_its_type_and_a_long_one_is_cut():
    assert results._last_line(MemoryError()) == "MemoryError"
    assert len(results._last_line(ValueError("x" * 5000))) == 500
