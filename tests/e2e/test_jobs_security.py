"""Credentials stay where they belong: the Jobs client's token never travels over plain http to
another machine (unless --insecure-token), goes only to an address parsed strictly (a DNS name
or an IP literal), never follows a redirect (the Jobs client's and `modresnet cluster`'s
requests alike), and `tune --resume` refuses an experiment folder someone else could have
written (it unpickles Ray's state).

Real HTTP servers on this machine record what reaches them; no mocks."""

from __future__ import annotations

import json

import pytest
from helpers.recorder import Recorder

from jobs.client import http, submit

TOKEN = "s3cret-token-for-the-test"


@pytest.mark.ray  # Ray's Jobs SDK, no Ray instance
@pytest.mark.parametrize("redirected", ["/api/version", "/api/jobs/"])
def test_no_request_carrying_the_token_follows_a_redirect(redirected, tmp_path, monkeypatch):
    elsewhere = Recorder("127.0.0.1", lambda path: (200, {}, b"{}"))

    def answer(path):
        if path.startswith(redirected):
            return 307, {"Location": f"{elsewhere.url}{path}"}, b""
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"ray_version": "2.60.0", "version": "2.60.0"}).encode(),
        )

    server = Recorder("127.0.0.1", answer)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("MODRESNET_HOME", str(tmp_path))
    try:
        # /api/version: our own reachability check (urllib); /api/jobs/: Ray's SDK (requests)
        with pytest.raises(http.RedirectError, match=rf"redirect \(HTTP 307\) to {elsewhere.url}"):
            submit.list_jobs(server.url)
        assert server.seen and all(auth == f"Bearer {TOKEN}" for _, auth in server.seen)
        assert elsewhere.seen == []  # nothing, with or without the token, went on
    finally:
        server.close()
        elsewhere.close()


@pytest.mark.ray  # Ray's Jobs SDK, no Ray instance
def test_ray_failures_are_classified_by_type_not_message(tmp_path, monkeypatch):
    """A job id the Jobs API does not know (HTTP 404) and a token Ray refuses (its
    AuthenticationError) are one-line JobsErrors, whatever the server's text says."""

    def answer(path):
        if path == "/api/version":
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"ray_version": "2.60.0", "version": "2.60.0"}).encode(),
            )
        if path.startswith("/api/jobs/no-such"):
            return 404, {}, b"some wording Ray may change"
        return 403, {}, b"nope"

    server = Recorder("127.0.0.1", answer)
    monkeypatch.setenv("MODRESNET_HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    try:
        with pytest.raises(submit.JobsError, match=r"no job 'no-such' on http://127\.0\.0\.1"):
            submit.job_info("no-such", server.url)
        with pytest.raises(submit.JobsError, match="the cluster refused the token"):
            submit.list_jobs(server.url)
    finally:
        server.close()
