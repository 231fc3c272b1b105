"""The Ray GPU path's rules, without a cluster or a GPU: one NCCL rank per GPU in a
data-parallel trial, and where a finished Ray run's test set is scored."""

from __future__ import annotations

import pytest
import torch

from jobs.train.driver import RayOptions, scoring_device
from jobs.tune.job import InvalidSetting, SearchSettings


@pytest.mark.parametrize("gpus", [0.5, 1.0, 3.0])
def test_data_parallel_trials_refuse_a_fraction_of_a_gpu_per_worker(gpus):
    with pytest.raises(InvalidSetting, match=r"^--gpus-per-trial: .* of a GPU per worker") as err:
        SearchSettings(workers_per_trial=2, gpus_per_trial=gpus)
    assert "--workers-per-trial 1" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("workers, gpus", [(1, 0.5), (2, 2.0), (2, 4.0), (4, 0.0)])
def test_whole_gpus_per_worker_and_single_worker_shares_are_fine(workers, gpus):
    SearchSettings(workers_per_trial=workers, gpus_per_trial=gpus)


def test_a_cpu_run_is_tested_on_the_cpu():
    assert scoring_device(RayOptions(use_gpu=False)) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert scoring_device(RayOptions(use_gpu=True)).type == expected
