"""GET /: the upload page (page.html: drop images, see the top-5 bars), which calls /predict
on its own origin."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = (Path(__file__).parent / "page.html").read_text()


def register(app: FastAPI) -> None:
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    app.add_api_route(
        "/", page, methods=["GET"], response_class=HTMLResponse, include_in_schema=False
    )
