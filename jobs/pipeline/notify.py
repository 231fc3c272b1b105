"""`--notify URL`: a small JSON document POSTed on every stage change, with a Slack-compatible
`text` field (a Slack or Mattermost incoming webhook shows it as the message). Delivery is
retried a few times; a notification that cannot be delivered is a warning, never the end of
the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from jobs.pipeline.settings import PipelineSetupError
from modresnet.errors import one_line

ATTEMPTS = 3
BACKOFF_S = 0.5  # doubled after each failed attempt
TIMEOUT_S = 5.0


def check_url(url: str) -> str:
    """An http(s) URL with a host, or a one-line PipelineSetupError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineSetupError(
            f"--notify {url!r}: expected an http:// or https:// URL, e.g. a Slack incoming "
            f"webhook https://hooks.slack.com/services/..."
        )
    return url


def message(
    pipeline: str, stage: str, status: str, reason: str = "", output: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The document sent: who, which stage, its new status, why, and a line for humans."""
    text = f"modresnet pipeline {pipeline}: {stage} {status}"
    if reason:
        text += f" ({reason})"
    return {
        "text": text,
        "pipeline": pipeline,
        "stage": stage,
        "status": status,
        "reason": reason,
        "output": output or {},
        "at": time.time(),
    }


class Notifier:
    """POSTs each document to `url` (None: notifications off); `warn` hears of a failure."""

    def __init__(
        self,
        url: str | None,
        warn: Callable[[str], None] = print,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.url = check_url(url) if url is not None else None
        self.warn = warn
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s

    def send(self, document: dict[str, Any]) -> bool:
        """Deliver `document`; True once a 2xx answer came, False (and a warning) if none did."""
        if self.url is None:
            return True
        import httpx

        problem = ""
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                answer = httpx.post(self.url, json=document, timeout=self.timeout_s)
                if answer.is_success:
                    return True
                problem = f"HTTP {answer.status_code}"
            except httpx.HTTPError as err:
                problem = one_line(err)
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        parts = urlsplit(self.url)  # a webhook's path is its secret: not in the logs
        self.warn(
            f"warning: --notify {parts.scheme}://{parts.netloc}/...: the {document.get('stage')} "
            f"{document.get('status')} notification was not delivered after {self.attempts} "
            f"attempts ({problem}); the pipeline goes on"
        )
        return False
