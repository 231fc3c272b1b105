"""The one HTTP error type of the Serve app, and the JSON body every error answers with.

Everything a client can get wrong raises `ApiError(status, message)`, which the app turns into
`{"error": ..., "status": ..., "request_id": ...}` with that 4xx status, and a line in the
replica's log naming the request id; nothing a client sends can produce a 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.http.request_ids import request_id

# Serve's logger: inside a replica its lines go to the replica's log, with Serve's fields.
log = logging.getLogger("ray.serve")


class ApiError(Exception):
    """A request the server refuses: `status` (a 4xx) and a one-line `message` saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ErrorBody(BaseModel):
    error: str
    status: int
    request_id: str


# The error answers a route documents in the OpenAPI spec.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 429, 503)
}


def error_response(
    status: int, message: str, rid: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error body of request `rid`: `message`, its status and its id."""
    extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return JSONResponse(
        {"error": message, "status": status, "request_id": rid},
        status_code=status,
        headers={**extra, **(headers or {})},
    )


def refuse(request: Request, status: int, message: str) -> JSONResponse:
    """A client error as its body, logged with the request's id."""
    rid = request_id(request.scope)
    log.info("request %s: %d %s", rid, status, message)
    return error_response(status, message, rid)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic/FastAPI errors -> one line, never echoing the input (which may be huge)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg'][:200]}" for e in errors]
    return "invalid request: " + "; ".join(parts[:5])


def invalid(err: ValidationError) -> ApiError:
    """A request body that does not match its schema, as a 400."""
    return ApiError(400, validation_message(err.errors()))


def add_error_handlers(app: FastAPI) -> None:
    """ApiError, FastAPI's own validation errors and Starlette's 404/405 as the JSON body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return refuse(request, err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return refuse(request, 400, validation_message(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return refuse(request, err.status_code, str(err.detail))
