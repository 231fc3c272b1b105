"""`modresnet tune`: real searches on Ray over real CIFAR-10 subsets with the debug model:
Optuna + ASHA (the module's search), FIFO killed and resumed, PBT. Data-parallel trials run
as a job on a real 3-node cluster (test_cluster.py).

The searches run the CLI in a subprocess (as a user would), so one can be killed mid-way and
resumed. The space varies the learning rate over orders of magnitude: the tiny lrs stay at
chance and ASHA (grace 1, reduction factor 2) stops them, the good ones run to the max.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.tune import (
    COMMON,
    REPO,
    SPACE,
    _env,
    _leaderboard,
    _results,
    _run_tune,
    _saved_trials,
    _trial_dirs,
    _tune,
    _tune_cmd,
)
from typer.testing import CliRunner

from modresnet import config as configs
from modresnet.cli import app

# --------------------------------------------------------------------------- real Ray

SAMPLES = 5  # the module's Optuna + ASHA search


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    (root / "space.yaml").write_text(SPACE)
    proc = subprocess.run(
        _tune_cmd(
            *COMMON,
            "--space",
            str(root / "space.yaml"),
            "--samples",
            str(SAMPLES),
            "--search",
            "optuna",
            "--include-paper",
            "--storage",
            str(root / "runs"),
            "--name",
            "asha",
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    (root / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Traceback" not in proc.stdout
    return root / "runs" / "asha"


@pytest.mark.ray
def test_asha_stops_weak_trials_and_best_runs_to_the_max(search):
    rows = _leaderboard(search)
    assert len(rows) == SAMPLES
    assert any(r["stopped_early"] == "True" for r in rows), rows
    best = rows[0]
    assert best["epochs"] == "3" and best["stopped_early"] == "False", rows
    assert all(int(r["epochs"]) >= 1 for r in rows)
    # the paper point ran: adam at 1e-3 (TPE takes the paper's values of the sampled keys)
    assert any(r["optim.name"] == "adam" and float(r["optim.lr"]) == 1e-3 for r in rows)
    for r in rows:  # momentum is sgd's: drawn for sgd trials only, a blank cell for adam
        assert (r.get("optim.momentum", "") == "") == (r["optim.name"] == "adam"), r
    summary = json.loads((search / "summary.json").read_text())
    assert summary["stopped_early"] >= 1 and summary["trials"] == SAMPLES
    assert (summary["search"], summary["scheduler"]) == ("optuna", "asha")
    assert summary["epochs_trained"] < SAMPLES * 3  # ASHA saved compute
    assert (search / "trials.png").stat().st_size > 10_000
    # the best config is a full config `train --config` accepts
    cfg = configs.resolve("paper", search / "best_config.yaml")
    assert cfg.model.widths == (8, 16, 32) and cfg.train.epochs == 3


@pytest.mark.ray
def test_every_trial_has_offline_wandb_files_with_its_metrics(search):
    trials = _trial_dirs(search)
    assert len(trials) == SAMPLES
    stopped = {r["trial"] for r in _leaderboard(search) if r["stopped_early"] == "True"}
    for trial_id, d in trials.items():
        runs = list(d.glob(f"wandb/offline-run-*-{trial_id}/run-{trial_id}.wandb"))
        assert len(runs) == 1, (trial_id, list(d.glob("wandb/*")))
        data = runs[0].read_bytes()
        assert b"val_acc" in data and b"train_loss" in data, trial_id
        # the run says which search it belongs to (config and tags), to compare in W&B
        assert b"search:optuna" in data and b"scheduler:asha" in data, trial_id
        assert (b"early_stop" in data) == (trial_id in stopped), trial_id  # ASHA's stop event
        assert (b"momentum" in data) == (b'"sgd"' in data), trial_id  # adam's config has none
        # Ray's own CSV/TensorBoard results stay
        assert (d / "progress.csv").exists() and list(d.glob("events.out.tfevents.*"))


@pytest.mark.ray
def test_exported_best_model_evaluates_and_predicts(search, tmp_path, small_cifar):
    from PIL import Image

    run = search / "best-run"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "best/model.safetensors",
        "last/train_state.json",
        "test.json",
        "curves.png",
        "confusion.png",
    ):
        assert (run / name).exists(), name
    test = json.loads((run / "test.json").read_text())
    meta = json.loads((run / "best" / "model.json").read_text())
    assert test["sha256"] == meta["sha256"] and test["n"] == 200
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(run), "--subset", "100"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == 100
    image = tmp_path / "cat.png"
    Image.fromarray(small_cifar.test.x[0].permute(1, 2, 0).numpy()).save(image)
    result = runner.invoke(app, ["predict", str(image), "--checkpoint", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)[0]["top_k"]) == 3


def _finished_and_partial(exp: Path) -> tuple[set[str], set[str]]:
    """Trials the saved search state records as finished, and as between epochs of their 3."""
    saved = _saved_trials(exp)
    finished = {t for t, (status, _) in saved.items() if status == "TERMINATED"}
    partial = {t for t, (status, e) in saved.items() if status != "TERMINATED" and e in (1, 2)}
    return finished, partial


@pytest.mark.ray
def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    storage, name = tmp_path / "runs", "killed"
    exp = storage / name
    log = (tmp_path / "first.txt").open("w")
    # One trial at a time and no early stops (FIFO), so the kill lands after a trial finished
    # and while the next is between epochs: one finished, one half-done.
    pairs = list(zip(COMMON[::2], COMMON[1::2], strict=True))
    args = [x for flag, value in pairs if flag != "--concurrent" for x in (flag, value)]
    proc = subprocess.Popen(
        _tune_cmd(
            *args,
            "--scheduler",
            "fifo",
            "--concurrent",
            "1",
            "--space",
            str(tmp_path / "space.yaml"),
            "--samples",
            "3",
            "--storage",
            str(storage),
            "--name",
            name,
            "--no-wandb",
        ),
        cwd=REPO,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    finished: dict[str, int] = {}
    partial: set[str] = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            # Freeze the search once its saved state (what a resume starts from) records a
            # finished trial and another between epochs. Trials take seconds (their process
            # is reused): if the freeze came too late for that, thaw and wait for the next.
            if all(_finished_and_partial(exp)):
                os.killpg(proc.pid, signal.SIGSTOP)
                done, partial = _finished_and_partial(exp)
                if done and partial:
                    trials = _trial_dirs(exp)
                    finished = {t: len(_results(trials[t])) for t in done}
                    break
                os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(timeout=60)
        log.close()
    assert finished and partial, (tmp_path / "first.txt").read_text()[-3000:]
    assert not (exp / "leaderboard.csv").exists()  # it really died mid-search

    resumed = _run_tune(
        "--resume", name, "--storage", str(storage), "--scheduler", "fifo", "--no-wandb"
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    (tmp_path / "second.txt").write_text(resumed.stdout + resumed.stderr)
    rows = _leaderboard(exp)
    assert len(rows) == 3 and all(r["status"] == "TERMINATED" for r in rows), rows
    trials = _trial_dirs(exp)
    for trial_id, count in finished.items():  # finished trials were not run again
        assert len(_results(trials[trial_id])) == count, trial_id
    for trial_id in partial:  # unfinished trials went on from their checkpoint, not epoch 1
        epochs = [r["epoch"] for r in _results(trials[trial_id])]
        assert epochs.count(1) == 1, (trial_id, epochs)
    epochs = [
        json.loads(line)["epoch"]
        for line in (exp / "best-run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == list(range(1, len(epochs) + 1))
    assert (exp / "best-run" / "test.json").exists()


@pytest.mark.ray
def test_resume_whose_saved_ray_state_names_a_missing_module_is_one_line(tmp_path):
    """Ray pickles a search's callbacks and searcher by module path (tuner.pkl): a search
    started by a version whose modules had other names (here jobs.tune_progress) is refused in
    one line naming the module, not with Ray's traceback."""
    import yaml

    from jobs.tune.job import JOB_FILE, SearchSettings, new_job
    from jobs.tune.space import parse_space

    storage, base = tmp_path / "runs", configs.resolve("debug")
    space = parse_space(yaml.safe_load(SPACE), base, "space.yaml")
    job = new_job(base, space, SearchSettings(max_epochs=1, samples=1), storage, "moved")
    job.experiment.mkdir(parents=True)
    (job.experiment / JOB_FILE).write_text(json.dumps(job.to_dict()))
    (job.experiment / "tuner.pkl").write_bytes(b"cjobs.tune_progress\nProgressCallback\n.")
    r = _run_tune("--resume", "moved", "--storage", str(storage), "--no-wandb")
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    assert "needs the module jobs.tune_progress, which is not installed here" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.ray
def test_asha_stops_data_parallel_trials_and_the_next_ones_still_run(tmp_path):
    """Two-worker trials, one at a time, on both CPUs: a trial ASHA stops is inside its Train
    run, so its process ends (no reuse for these) and its Train run with it; the next trial
    gets the CPUs and runs. Reused, the next trial failed ("reuse requires reset_config()")
    and the search then hung."""
    r = _run_tune(
        *("--preset", "debug", "--subset", "256", "--set", "data.val_subset=200"),
        *("--set", "data.test_subset=100", "--samples", "4", "--max-epochs", "3"),
        *("--grace-period", "1", "--concurrent", "1", "--workers-per-trial", "2"),
        *("--cpus-per-trial", "2", "--no-wandb", "--storage", str(tmp_path), "--name", "dp"),
        timeout=400,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = _leaderboard(tmp_path / "dp")
    print([(row["trial"], row["status"], row["epochs"]) for row in rows])
    assert len(rows) == 4 and all(row["status"] == "TERMINATED" for row in rows), rows
    assert any(int(row["epochs"]) < 3 for row in rows), rows  # ASHA stopped at least one
    assert any(int(row["epochs"]) == 3 for row in rows), rows


@pytest.mark.ray
def test_a_search_whose_every_trial_fails_says_why_in_one_line(tmp_path, data_dir):
    """Trials that cannot read the data (a node without it, here a corrupt copy) fail in Ray;
    the search ends with exit 1 and one line naming the cause, not "interrupted, resume it"."""
    corrupt = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-batches-py", corrupt)
    (corrupt / "data_batch_1").write_bytes(b"not a pickle")
    r = _run_tune(
        *("--preset", "debug", "--samples", "1", "--max-epochs", "1", "--no-wandb"),
        *("--storage", str(tmp_path / "runs"), "--name", "fails"),
        MODRESNET_DATA=str(tmp_path / "data"),
    )
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("search failed")]
    assert line.startswith("search failed: 1 of 1 trials failed; trial "), line
    assert "DataError: CIFAR-10 file " in line and "data_batch_1 is corrupt" in line, line
    assert "Traceback" not in r.stdout + r.stderr and "--resume" not in r.stderr


@pytest.mark.ray
def test_pbt_clones_better_trials_and_each_trains_with_its_own_lr(tmp_path):
    """PBT every 2 epochs between two trials running at once (its population): the worse
    restarts from the better one's checkpoint with a perturbed lr, and its optimizer then
    runs at that lr, not the donor's (with the constant schedule every epoch reports the
    config's lr). Ten short epochs (four chances to exploit), so the trials overlap however
    late the second starts."""
    (tmp_path / "space.yaml").write_text(
        "optim.name: adam\noptim.lr: {loguniform: [1.0e-5, 1.0e-2]}\nschedule.name: constant\n"
    )
    _tune(
        "--preset",
        "debug",
        "--subset",
        "1200",
        "--set",
        "data.val_subset=300",
        "--set",
        "data.test_subset=100",
        "--max-epochs",
        "10",
        "--samples",
        "2",
        "--scheduler",
        "pbt",
        "--grace-period",
        "2",
        "--space",
        str(tmp_path / "space.yaml"),
        "--no-wandb",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "pbt",
    )
    exp = tmp_path / "runs" / "pbt"
    rows = _leaderboard(exp)
    assert len(rows) == 2 and all(r["epochs"] == "10" for r in rows), rows
    assert sum(int(r["pbt_exploits"]) for r in rows) >= 1, rows
    clones = 0
    for d in _trial_dirs(exp).values():
        for result in _results(d):
            assert result["lr"] == pytest.approx(result["config"]["optim"]["lr"]), result
            clones += result.get("pbt_exploit", 0)
    assert clones >= 1
    assert json.loads((exp / "summary.json").read_text())["pbt_exploits"] == clones
    assert (exp / "trials.png").stat().st_size > 10_000
