"""`--notify URL` against a real loopback HTTP server: a document with a Slack-compatible
`text` on every stage change, retried on a failed delivery, and a receiver that never
answers (or is not there) costs a warning, never the pipeline."""

from __future__ import annotations

from functools import partial

import pytest
from helpers.recorder import Inbox

from jobs.pipeline import driver
from jobs.pipeline.notify import Notifier, check_url, message
from jobs.pipeline.settings import PipelineSetupError
from jobs.pipeline.state import STAGES
from unit.test_pipeline_state import calls, settings  # noqa: F401 - the stub stages fixture


@pytest.fixture
def inbox():
    box = Inbox()
    yield box
    box.close()


def test_every_stage_change_is_posted_with_a_slack_text(tmp_path, inbox, calls):  # noqa: F811
    state = driver.run_pipeline(
        settings(tmp_path), driver.RunOptions(notify=inbox.url), info=lambda line: None
    )
    assert state.status == "finished"
    seen = [(b["stage"], b["status"]) for b in inbox.bodies]
    expected = [(stage, status) for stage in STAGES for status in ("running", "done")]
    assert seen == expected + [("pipeline", "finished")]
    first = inbox.bodies[0]
    assert first["text"] == "modresnet pipeline p1: search running"
    assert first["pipeline"] == "p1" and isinstance(first["at"], float)
    last = inbox.bodies[-1]
    assert last["text"] == "modresnet pipeline p1: pipeline finished"
    assert set(last["output"]) >= {"best_trial_val_acc", "test_acc", "champion_test_acc"}


def test_a_stop_is_posted_with_its_reason(tmp_path, inbox, calls, monkeypatch):  # noqa: F811
    from jobs.pipeline import stages

    def refuse(ctx):
        raise stages.Stop("evaluated on another test set (md5 a vs b)")

    monkeypatch.setitem(stages.RUN, "gate", refuse)
    driver.run_pipeline(
        settings(tmp_path), driver.RunOptions(notify=inbox.url), info=lambda line: None
    )
    stop = inbox.bodies[-1]
    assert (stop["stage"], stop["status"]) == ("gate", "stopped")
    assert stop["text"] == (
        "modresnet pipeline p1: gate stopped (evaluated on another test set (md5 a vs b))"
    )


def test_a_failed_delivery_is_retried():
    box = Inbox([500, 503])
    try:
        warnings: list[str] = []
        sent = Notifier(box.url, warn=warnings.append, backoff_s=0.01).send(
            message("p1", "search", "running")
        )
        assert sent and warnings == []
        assert len(box.bodies) == 3  # two failures, then the delivery
    finally:
        box.close()


def test_an_undeliverable_notification_is_a_warning_and_the_pipeline_goes_on(
    tmp_path,
    calls,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setattr(driver, "Notifier", partial(Notifier, backoff_s=0.01))
    box = Inbox([500] * 100)
    try:
        lines: list[str] = []
        state = driver.run_pipeline(
            settings(tmp_path), driver.RunOptions(notify=box.url), info=lines.append
        )
    finally:
        box.close()
    assert state.status == "finished" and calls == list(STAGES)
    warned = [line for line in lines if line.startswith("warning: --notify")]
    assert len(warned) == 2 * len(STAGES) + 1
    assert "not delivered after 3 attempts (HTTP 500); the pipeline goes on" in warned[0]
    assert "secret" not in warned[0]  # a webhook's path is its key


def test_a_receiver_that_is_not_there_is_a_warning():
    box = Inbox()
    url = box.url
    box.close()
    lines: list[str] = []
    assert not Notifier(url, warn=lines.append, backoff_s=0.01).send(message("p", "gate", "done"))
    assert len(lines) == 1 and "the gate done notification was not delivered" in lines[0]


@pytest.mark.parametrize("url", ["ftp://host/x", "hooks.slack.com/x", "http://", "file:///etc"])
def test_a_notify_url_that_is_not_http_is_refused_at_once(url):
    with pytest.raises(PipelineSetupError, match="expected an http:// or https:// URL"):
        check_url(url)
