"""The compact Tune console (jobs/tune/progress.py): one line per finished trial in a log, one
table of trials and their differing values on a terminal."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from jobs.tune.job import TuneJob

tune_progress = pytest.importorskip("jobs.tune.progress")


def _job() -> TuneJob:
    from jobs.tune.job import SearchSettings, new_job
    from jobs.tune.space import DEFAULT_SPACE, load_space
    from modresnet import config as configs

    base = configs.resolve("demo", overrides={"optim.nesterov": False, "train.epochs": 3})
    space = load_space(DEFAULT_SPACE, base)
    return new_job(base, space, SearchSettings(max_epochs=3, samples=3), Path("runs"), "demo")


def _trial(trial_id, status, epoch, val, optim="sgd", lr=0.01, batch=128, momentum=0.9):
    config = {
        "optim": {"name": optim, "lr": lr, "momentum": momentum, "betas": [0.9, 0.999]},
        "train": {"batch_size": batch, "label_smoothing": 0.1},
        "augment": {"cutout": 8},
    }
    result = {"epoch": epoch, "val_acc": val} if epoch else {}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result, config=config)


def test_applicable_drops_the_fields_the_sampled_optimizer_ignores():
    values = {
        "optim.name": "adam",
        "optim.momentum": 0.9,
        "optim.nesterov": True,
        "optim.betas": [0.9, 0.99],
        "optim.lr": 0.1,
    }
    assert tune_progress.applicable(values, "sgd") == {
        "optim.name": "adam",
        "optim.betas": [0.9, 0.99],
        "optim.lr": 0.1,
    }
    values["optim.name"] = "sgd"
    assert "optim.betas" not in tune_progress.applicable(values, "adam")
    assert tune_progress.applicable({"optim.momentum": 0.9}, "sgd") == {"optim.momentum": 0.9}


def test_value_columns_show_what_differs_most_telling_first_and_fit_the_width():
    rows = [
        {"augment.cutout": 8, "optim.lr": 0.1, "train.batch_size": 64, "optim.name": "sgd"},
        {"augment.cutout": 0, "optim.lr": 0.01, "train.batch_size": 64, "optim.name": "adam"},
    ]
    order = ["augment.cutout", "optim.name", "optim.lr", "train.batch_size", "schedule.name"]
    keys, hidden, names = tune_progress.value_columns(rows, order, None)
    assert keys == ["optim.name", "optim.lr", "augment.cutout"] and hidden == 0  # batch same
    assert names["optim.name"] == "optim" and names["schedule.name"] == "schedule"
    assert names["optim.lr"] == "lr"
    keys, hidden, _ = tune_progress.value_columns(rows, order, width=80, fixed=70)
    assert keys == ["optim.name"] and hidden == 2


def test_trial_table_in_a_log_prints_one_line_per_finished_trial(tmp_path):
    console = Console(file=(tmp_path / "out.txt").open("w"), width=120, force_terminal=False)
    with tune_progress.TrialTable(_job(), console=console) as table:
        callback = pickle.loads(pickle.dumps(tune_progress.ProgressCallback()))  # Tuner pickles it
        trials = [_trial("t_00000", "RUNNING", 1, 0.2), _trial("t_00001", "PENDING", 0, None)]
        callback.on_step_end(iteration=1, trials=trials)
        trials = [
            _trial("t_00000", "TERMINATED", 1, 0.25),
            _trial("t_00001", "TERMINATED", 3, 0.4, optim="adam", lr=3e-3),
        ]
        callback.on_trial_complete(iteration=2, trials=trials, trial=trials[1])
        callback.on_experiment_end(trials=trials)
        assert table.live is None
    callback.on_step_end(iteration=3, trials=trials)  # no table open: nothing happens
    # A resumed search: a trial that finished before the restart has only its last result,
    # and Tune's running max says what its best epoch was.
    restored = _trial("t_00002", "TERMINATED", 3, 0.3)
    restored.metric_analysis = {"val_acc": {"max": 0.45, "last": 0.3}}
    with tune_progress.TrialTable(_job(), console=console):
        callback.on_step_end(iteration=1, trials=[restored])
    console.file.close()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines == [
        "trial t_00000 stopped (ASHA): epoch 1/3, best val 25.0%  (optim=sgd  lr=0.01  "
        "batch_size=128)",
        "trial t_00001 done: epoch 3/3, best val 40.0%  (optim=adam  lr=0.003  batch_size=128)",
        "trial t_00002 done: epoch 3/3, best val 45.0%  (optim=sgd  lr=0.01  batch_size=128)",
    ]


def test_trial_table_on_a_terminal_is_one_table_of_trials_and_differing_values():
    console = Console(width=140, force_terminal=True, record=True)
    table = tune_progress.TrialTable(_job(), console=console)
    trials = [
        _trial("t_00000", "RUNNING", 2, 0.31, lr=0.05, momentum=0.85),
        _trial("t_00001", "TERMINATED", 1, 0.12, optim="adam", lr=3e-4),
        _trial("t_00002", "PENDING", 0, None),
    ]
    console.print(table.render([table._state(t) for t in trials]))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "trial" in line and "status" in line)
    for column in ("epoch", "val acc", "optim", "lr", "momentum"):
        assert column in header, header
    assert "batch_size" not in header and "cutout" not in header  # the same in every trial
    assert "running" in text and "stopped (ASHA)" in text and "pending" in text
    assert "31.0%" in text and "2/3" in text
    row = next(line for line in text.splitlines() if "t_00001" in line)
    assert "adam" in row and "-" in row  # momentum does not apply to adam
