"""What must not reach a successful `make demo` console, checked against the lines it catches."""

from __future__ import annotations

from helpers.console import noise


def test_noise_patterns_catch_the_lines_issue_13_reported():
    seen = [
        "2026-11-26 06:13:46,304\tWARNING authentication_token_setup.py:85 -- Token "
        "authentication is enabled for this Ray cluster.",
        "[2026-11-26 06:16:20,740 E 8884 8884] core_worker.cc:2465: Actor with class name: "
        "'_flushing_wandb_callback.<locals>._FlushingActor'",
        "(raylet) Task ServeController.graceful_shutdown failed. There are infinite retries "
        "remaining, so the task will be retried.",
        "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed.",
        'INFO 2026-11-26 06:19:49,007 serve 10886 -- Started Serve in namespace "serve".',
        "Trial status: 2 PENDING",
        "Traceback (most recent call last):",
    ]
    for line in seen:
        assert noise(line), line
    clean = [
        "epoch   1/8  train 2.067 /  27.2%  val 1.875 /  29.2%  lr 1.60e-02  989 img/s  13.0s",
        "trial d0dbc_00000 stopped (ASHA): epoch 1/3, best val 11.4%  (optim=sgd  lr=0.00222)",
        "W&B off: set WANDB_API_KEY, or WANDB_MODE=offline to log locally",
    ]
    assert noise("\n".join(clean)) == []
