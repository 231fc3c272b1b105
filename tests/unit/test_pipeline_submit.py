"""`modresnet jobs submit pipeline ...` checks the pipeline's own flags before it looks for a
cluster, so a typo in `pipeline run`'s options fails here in a second, one line, exit 2."""

import subprocess
import sys

import pytest


def submit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modresnet.cli", "jobs", "submit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["pipeline", "run", "p1", "--samplez", "2"], "pipeline run: No such option: --samplez"),
        (["pipeline", "run", "p1", "--promote", "sideways"], "sideways"),
        (["pipeline", "run"], "pipeline run: Missing parameter: name"),
        (["pipeline", "rnu", "p1"], "No such command 'rnu'"),
    ],
)
def test_a_pipeline_typo_fails_before_the_submission(args, message):
    done = submit(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert "pipeline" in done.stderr.splitlines()[-1]
