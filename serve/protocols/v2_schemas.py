"""The Open Inference Protocol v2 schemas: the request and response bodies of
/v2/models/modresnet/infer (every field typed, so a wrong one is a 400 before inference) and
the OpenAPI entry for the request body, which FastAPI does not parse itself."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
)

from serve.http.openapi import inline_schema

MODEL_NAME = "modresnet"


def _parameter(value: Any) -> Any:
    if type(value) not in (str, int, float, bool):
        raise ValueError("a parameter is a string, number or boolean (not an object, array, null)")
    return value


# The protocol's `$parameter`: a JSON string, number or boolean, never an object or array.
Parameter = Annotated[
    Any,
    AfterValidator(_parameter),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


class Parameters(BaseModel):
    """A v2 `parameters` object: the keys this app reads are typed below (in subclasses);
    any other key is kept, but only with a string, number or boolean value."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Parameter]


class InputParameters(Parameters):
    binary_data_size: StrictInt | None = Field(
        None, ge=0, description="Bytes of this input after the JSON (binary tensor data)."
    )


class OutputParameters(Parameters):
    binary_data: StrictBool = Field(False, description="Send this output after the JSON.")
    classification: StrictInt | None = Field(
        None, description="Not supported: ask for `probabilities` and rank them."
    )

    @field_validator("classification")
    @classmethod
    def _no_classification(cls, value: int | None) -> int | None:
        if value:
            raise ValueError(
                "the classification extension is not supported: request `probabilities` "
                "and rank them, or use /predict with top_k"
            )
        return value


class RequestParameters(Parameters):
    binary_data_output: StrictBool = Field(
        False, description="Send every output after the JSON (binary tensor data)."
    )


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["input"] = Field(description="This model's one input.")
    shape: list[StrictInt] = Field(
        description="[N,32,32,3] (NHWC) or [N,3,32,32] (NCHW), N >= 1.", max_length=8
    )
    datatype: Literal["UINT8", "FP32"] = Field(
        description="UINT8 (JSON integers 0..255) or FP32 (numbers 0..1)."
    )
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(
        None,
        description="Numbers only, flat or nested evenly, "
        "row-major; strings and booleans are refused. Omitted when "
        "parameters.binary_data_size puts the tensor after the JSON "
        "(binary tensor data extension).",
    )

    @field_validator("shape")
    @classmethod
    def _image_shape(cls, shape: list[int]) -> list[int]:
        if len(shape) != 4 or shape[0] < 1 or shape[1:] not in ([32, 32, 3], [3, 32, 32]):
            raise ValueError(
                f"{shape}: expected [N,32,32,3] (NHWC) or [N,3,32,32] (NCHW) with N >= 1"
            )
        return shape


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["probabilities"] = Field(description="This model's one output.")
    parameters: OutputParameters | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[InferTensor] = Field(min_length=1, max_length=1, description="One: `input`.")
    outputs: list[RequestedOutput] | None = Field(None, max_length=1)


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


INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(InferRequest)}},
    }
}
