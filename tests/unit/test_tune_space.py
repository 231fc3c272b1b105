"""`modresnet tune` before Ray starts: invalid search spaces exit 2 naming the field, the
default space holds the paper point, and a saved search round-trips and guards a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.tune import (
    SPACE,
)
from typer.testing import CliRunner

from modresnet import config as configs
from modresnet.cli import app

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"

# --------------------------------------------------------------------------- no Ray


BAD_SPACES = [
    ("optim.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n", "optim.learning_rate: unknown key"),
    ("optim.lr: {gaussian: [0.0, 1.0]}\n", "unknown distribution 'gaussian'"),
    ("optim.lr: {loguniform: [0.1, 0.01]}\n", "low < high"),
    ("optim.lr: {loguniform: [0.0, 0.01]}\n", "low > 0"),
    ("optim.lr: {uniform: [0.001]}\n", "uniform needs 2 values"),
    ("augment.flip: {uniform: [0.0, 1.5]}\n", "augment.flip"),
    ("optim.name: {choice: [adam, rmsprop]}\n", "optim.name"),
    ("train.epochs: {choice: [1, 2]}\n", "train.epochs: not tunable"),
    ("data.subset: {choice: [100, 200]}\n", "data.* is not tunable"),
    ("optim.lr: [\n", "not valid YAML"),
    ("- optim.lr\n", "expected a mapping"),
    ("optim.name: {choice: [adam, sgd]}\n", "PBT has nothing to mutate", "--scheduler", "pbt"),
    ("optim.lr: 0.001\n", "nothing to model", "--search", "optuna"),
    ("optim.lr: {uniform: [0.001, 0.01]}\n", "must be one of random, optuna", "--search", "grid"),
]


CASES = [(case[0], case[1], list(case[2:])) for case in BAD_SPACES]


@pytest.mark.parametrize("text,fragment,flags", CASES, ids=[c[1][:24] for c in CASES])
def test_invalid_space_exits_2_naming_the_field(tmp_path, text, fragment, flags):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--preset",
            "debug",
            "--space",
            str(space),
            "--storage",
            str(tmp_path / "runs"),
            "--samples",
            "2",
            *flags,
        ],
    )
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "error:" in output and fragment in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists()  # nothing started


def test_default_space_is_valid_and_holds_the_paper_point():
    from jobs.tune import space as spaces

    base = configs.resolve("debug")
    space = spaces.load_space(spaces.DEFAULT_SPACE, base)
    for family in (
        "augment.cutout",
        "augment.rotation",
        "optim.name",
        "optim.lr",
        "optim.betas",
        "optim.nesterov",
        "train.batch_size",
        "schedule.name",
        "train.label_smoothing",
    ):
        assert family in space.tuned_keys()
    point = space.point(configs.paper())
    paper = spaces.trial_config(base, point)
    assert paper.optim.name == "adam" and paper.optim.lr == 1e-3
    assert paper.schedule.name == "plateau" and paper.augment.rotation == 20.0
    # sgd-only fields never reach adam, betas never reach sgd
    sgd = spaces.overrides_for(
        {"optim": {"name": "sgd", "nesterov": True, "betas": [0.9, 0.99]}}, base
    )
    assert "optim.betas" not in sgd and sgd["optim.nesterov"] is True
    adam = spaces.overrides_for({"optim": {"name": "adam", "nesterov": True}}, base)
    assert "optim.nesterov" not in adam
    # a Nesterov base (the fast and demo presets) still yields valid adam trials
    for preset in ("fast", "demo"):
        nesterov = configs.resolve(preset)
        trial = spaces.trial_config(nesterov, {"optim.name": "adam", "optim.lr": 1e-3})
        assert trial.optim.name == "adam" and not trial.optim.nesterov
        assert "optim.name" in spaces.load_space(spaces.DEFAULT_SPACE, nesterov).tuned_keys()


def _saved_search(tmp_path: Path) -> Path:
    """A search as `tune` saves it before its first trial (no Ray involved)."""
    from jobs.tune import space as spaces
    from jobs.tune.job import JOB_FILE, SearchSettings, new_job

    base = configs.resolve("debug", overrides={"data.subset": 600, "train.epochs": 3})
    space = spaces.parse_space(yaml.safe_load(SPACE), base, "space.yaml")
    job = new_job(base, space, SearchSettings(samples=6, max_epochs=3), tmp_path / "runs", "s")
    job.experiment.mkdir(parents=True)
    (job.experiment / JOB_FILE).write_text(json.dumps(job.to_dict()))
    return job.experiment


def test_saved_search_round_trips_in_the_format_earlier_versions_wrote(tmp_path):
    from jobs.tune.job import JOB_FILE, read_job

    exp = _saved_search(tmp_path)
    saved = json.loads((exp / JOB_FILE).read_text())
    assert set(saved) == {  # the keys modresnet-tune.json always had
        "name",
        "storage",
        "base",
        "space",
        "space_source",
        "samples",
        "max_epochs",
        "grace_period",
        "reduction_factor",
        "concurrent",
        "metric",
        "mode",
        "workers_per_trial",
        "cpus_per_trial",
        "gpus_per_trial",
        "include_paper",
        "search_seed",
        "train_storage",
        "search",  # since issue 14; a file without them is random search + ASHA
        "scheduler",
        "test_best",  # since the pipeline; a file without it tests its best trial
    }
    job = read_job(exp)
    assert job.to_dict() == saved and job.base.train.epochs == 3 and job.mode == "max"
    older = {k: v for k, v in saved.items() if k not in ("search", "scheduler", "test_best")}
    (exp / JOB_FILE).write_text(json.dumps(older))
    assert (read_job(exp).search, read_job(exp).scheduler) == ("random", "asha")
    assert read_job(exp).test_best


@pytest.mark.parametrize(
    "edit, fragment",
    [
        ({"samples": 0}, "samples: must be at least 1"),
        ({"metric": "accuracy"}, "metric: must be one of val_acc"),
        ({"base": {"optim": {"lr": -1}}}, "base.optim.lr: must be between 1e-08 and 10.0"),
        ({"space": {"optim.lrr": 1}}, "space: "),
        ({"grace_period": "one"}, "grace_period: expected an integer"),
        ({"samplez": 3}, "samplez: unknown key; a search has search, scheduler, samples,"),
        ({"cpus_per_trial": 0}, "cpus_per_trial: must be positive, got 0"),
        ({"include_paper": "yes"}, "include_paper: expected true or false, got 'yes'"),
        ({"name": None}, "name: expected a string, got None"),
        ({"scheduler": "hyperband"}, "scheduler: must be one of asha, pbt, fifo"),
    ],
)
def test_resume_refuses_a_hand_edited_search_file_naming_the_field(tmp_path, edit, fragment):
    from jobs.tune.job import JOB_FILE

    exp = _saved_search(tmp_path)
    saved = json.loads((exp / JOB_FILE).read_text())
    (exp / JOB_FILE).write_text(json.dumps({**saved, **edit}))
    result = CliRunner().invoke(app, ["tune", "--resume", "s", "--storage", str(exp.parent)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and JOB_FILE in output and fragment in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--samples", "4"], "--samples 4 conflicts with the saved search s (samples 6)"),
        (["--max-epochs", "5"], "--max-epochs 5 conflicts"),
        (["--metric", "val_loss"], "--metric val_loss conflicts"),
        (["--include-paper"], "--include-paper True conflicts"),
        (["--cpus-per-trial", "2"], "--cpus-per-trial 2.0 conflicts"),
        (["--name", "other"], "--name other conflicts with --resume s"),
        (
            ["--search", "optuna"],
            "--search optuna conflicts with the saved search s (search random)",
        ),
        (["--scheduler", "pbt"], "--scheduler pbt conflicts"),
        (["--preset", "paper"], "the saved search s has"),
        (
            ["--preset", "debug", "--subset", "600", "--set", "train.batch_size=32"],
            "train.batch_size 32, the saved search s has 64",
        ),
    ],
)
def test_resume_refuses_search_flags_that_contradict_the_saved_search(tmp_path, flags, fragment):
    exp = _saved_search(tmp_path)
    result = CliRunner().invoke(
        app, ["tune", "--resume", "s", "--storage", str(exp.parent), *flags]
    )
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and fragment in output, output
    assert "Traceback" not in output


def test_resume_accepts_flags_that_repeat_the_saved_search(tmp_path):
    """Each repeated flag is compared and accepted; the same flag with another value is not."""
    from jobs.tune.command import check_resume
    from jobs.tune.job import TuneSetupError, read_job

    job = read_job(_saved_search(tmp_path))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    again = configs.resolve("debug", overrides={"data.subset": 600})
    repeated = {
        "samples": 6,
        "max_epochs": 3,
        "cpus_per_trial": 1,
        "search": "random",
        "scheduler": "asha",
    }
    assert check_resume(job, repeated, "s", again, space) is None
    for field, other in (("samples", 7), ("cpus_per_trial", 2), ("scheduler", "fifo")):
        with pytest.raises(TuneSetupError, match=f"conflicts with the saved search s \\({field}"):
            check_resume(job, {**repeated, field: other}, "s", again, space)
    with pytest.raises(TuneSetupError, match="data.subset 700, the saved search s has 600"):
        check_resume(job, repeated, "s", again.with_overrides({"data.subset": 700}), space)


def test_a_search_file_as_written_before_still_loads():
    """tests/fixtures/legacy/modresnet-tune.json is a search as the dataclass settings saved it."""
    from jobs.tune.job import JOB_FILE, TuneJob

    saved = json.loads((LEGACY / JOB_FILE).read_text())
    job = TuneJob.from_dict(saved, JOB_FILE)
    now = job.to_dict()
    base, old_base = now.pop("base"), saved.pop("base")
    assert now.pop("test_best") is True  # newer than the file: its best trial is tested
    assert now == saved
    old_base["train"]["tta_views"] = 2 if old_base["train"].pop("tta") else 1
    assert all(base[s][k] == v for s, fields in old_base.items() for k, v in fields.items())
    assert (job.samples, job.max_epochs, job.cpus_per_trial, job.mode) == (6, 3, 0.5, "max")
    assert job.base.data.subset == 600 and job.base.train.epochs == 3
    assert job.search_space().tuned_keys()


def test_search_flags_come_from_the_settings_model():
    """Every search setting is a `tune` flag whose help is the field's description and whose
    default is the model's."""
    from jobs.tune.job import SearchSettings

    text = " ".join(
        CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "400"}).output.split()
    )
    for name, field in SearchSettings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        assert f"{flag} " in text and field.description in text, name
    assert "Trials to run (the paper point counts as one); default 8" in text
    assert "(optuna: Optuna's TPE): random | optuna; default random" in text
    assert "Epochs of a trial that runs to the end; default the config's train.epochs" in text
