"""GET /: the page (page.html): which version(s) answer, how good each is and where it came
from (from /model), the canary's share while one runs, a strip of CIFAR-10 test images that
classify on a click, and a drop zone for the visitor's own image; it calls /predict on its own
origin. The strip's images are served from /samples/N.png under the app's route prefix (the
script sets each src from the page's path), so the page's CSP keeps allowing images from its
own origin only."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from serve.http.errors import ApiError
from serve.protocols import samples

SAMPLES = samples.load()


def _strip() -> str:
    return "\n".join(
        f'<button type="button" class="sample" data-index="{s["index"]}" '
        f'data-label="{html.escape(s["label"])}" title="a {html.escape(s["label"])} (test image '
        f'{s["index"]})"><img alt="{html.escape(s["label"])}" '
        'width="48" height="48"></button>'
        for s in SAMPLES
    )


PAGE = (Path(__file__).parent / "page.html").read_text().replace("<!--samples-->", _strip())


def register(app: FastAPI) -> None:
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    def sample(index: int) -> Response:
        if not 0 <= index < len(SAMPLES):
            raise ApiError(404, f"no sample image {index}; there are 0..{len(SAMPLES) - 1}")
        return Response(SAMPLES[index]["png"], media_type="image/png")

    app.add_api_route(
        "/", page, methods=["GET"], response_class=HTMLResponse, include_in_schema=False
    )
    app.add_api_route("/samples/{index}.png", sample, methods=["GET"], include_in_schema=False)
