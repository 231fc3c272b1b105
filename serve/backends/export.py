"""The ONNX export of a checkpoint: the whole Predictor path (uint8 images -> normalization ->
model -> softmax) as one graph, the input of the onnx and int8 backends."""

from __future__ import annotations

import warnings

import torch

from modresnet.augment import normalize, to_float
from modresnet.checkpoint import LoadedModel

EXPORT_VERSION = 1  # bump when export_onnx changes what it writes


class _Exportable(torch.nn.Module):
    """uint8 images -> probabilities, the whole Predictor path as one graph."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model.eval()
        self.mean = tuple(loaded.config.data.mean)
        self.std = tuple(loaded.config.data.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(normalize(to_float(x), self.mean, self.std)).float(), dim=1)


def export_onnx(loaded: LoadedModel) -> bytes:
    """The checkpoint as an ONNX model (input `input` uint8 [N,3,32,32], output `probabilities`)."""
    module = _Exportable(loaded).eval()
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            verbose=False,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_shapes={"x": {0: batch}},
        )
    assert program is not None  # dynamo=True always returns a program
    return program.model_proto.SerializeToString()
