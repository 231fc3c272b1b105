"""GET /: the page (page.html): which version(s) answer, how good each is and where it came
from (from /model), the canary's share while one runs, a strip of CIFAR-10 test images that
classify on a click, and a drop zone for the visitor's own image; it calls /predict on its own
origin. The strip's images are in the page itself, as data: URIs (52 KB of the 62 KB page): a
page that fetched them would send a burst of requests that a replica with a small queue sheds
with 429s, and a click classifies the exact bundled bytes with no request but /predict."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from serve.protocols import samples

SAMPLES = samples.load()


def _strip() -> str:
    return "\n".join(
        f'<button type="button" class="sample" data-index="{s["index"]}" '
        f'data-label="{html.escape(s["label"])}" title="a {html.escape(s["label"])} (test image '
        f'{s["index"]})"><img alt="{html.escape(s["label"])}" width="48" height="48" '
        f'src="data:image/png;base64,{base64.b64encode(s["png"]).decode()}"></button>'
        for s in SAMPLES
    )


PAGE = (Path(__file__).parent / "page.html").read_text().replace("<!--samples-->", _strip())


def register(app: FastAPI) -> None:
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    app.add_api_route(
        "/", page, methods=["GET"], response_class=HTMLResponse, include_in_schema=False
    )
