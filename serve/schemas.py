"""The HTTP API's schemas: request and response bodies of /predict and the Open Inference
Protocol v2 routes, and the OpenAPI entries for the bodies FastAPI does not parse itself."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MODEL_NAME = "modresnet"


class ErrorBody(BaseModel):
    error: str
    status: int


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    index: int
    filename: str | None = None
    top_k: list[LabelProbability]


class PredictResponse(BaseModel):
    model_sha256: str
    backend: str
    predictions: list[ImagePrediction]


class PredictJson(BaseModel):
    images: list[str] = Field(
        description="Base64 image bytes (PNG, JPEG, GIF...); a "
        "`data:image/...;base64,` prefix is allowed."
    )
    top_k: int | None = Field(default=None, ge=1, le=10)


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="UINT8 (JSON integers 0..255) or FP32 (numbers 0..1).")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        None,
        description="Numbers only, flat or nested evenly, "
        "row-major; strings and booleans are refused. Omitted when "
        "parameters.binary_data_size puts the tensor after the JSON "
        "(binary tensor data extension).",
    )


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[dict[str, Any]] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its `$defs` inlined: in openapi_extra a `#/$defs/...` ref
    would point into the OpenAPI document's root, where nothing is."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {"schema": inline_schema(PredictJson)},
        },
    }
}
INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(InferRequest)}},
    }
}
