"""The app's OpenAPI spec: served at /openapi.json behind the API key, and the helper the
protocols use to document the request bodies FastAPI does not parse itself."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serve.http.auth import ApiKeys


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined: in openapi_extra a `#/$defs/...` ref
    would point into the OpenAPI document's root, where nothing is."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    result: dict[str, Any] = resolve(schema)
    return result


def add_openapi_route(app: FastAPI, keys: ApiKeys) -> None:
    """GET /openapi.json, which needs the key when there is one (FastAPI's own is off)."""

    async def openapi(request: Request) -> JSONResponse:
        keys.check(request)
        schema = app.openapi()
        root_path = request.scope.get("root_path", "").rstrip("/")
        if root_path:  # the route prefix, as FastAPI's own /openapi.json puts it
            schema = {**schema, "servers": [{"url": root_path}]}
        return JSONResponse(schema)

    app.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
