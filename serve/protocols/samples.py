"""The strip of CIFAR-10 test images the page offers to classify with a click, so a visitor
needs no image of their own: the first `COUNT` images of the official test batch, as PNGs with
their true labels, bundled in samples.json (the data set is not on a serving node).

Generated once from the data set: `python -m serve.protocols.samples [DATA_DIR] >
serve/protocols/samples.json` (DATA_DIR: as --data-dir; default MODRESNET_DATA);
tests/integration checks the file matches the data."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

COUNT = 16
PATH = Path(__file__).parent / "samples.json"


def png(pixels: Any) -> bytes:
    """uint8 3 x 32 x 32 (a CIFAR-10 row) -> PNG bytes, written the same way every time."""
    buf = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def from_data(data_dir: str | None = None) -> list[dict[str, Any]]:
    """The first COUNT test images as {index, label, png (base64)}."""
    from modresnet import data

    folder = data.batches_dir(data.resolve_root(data_dir))
    meta = data._read_batch(folder / data.META_FILE[0], data.META_FILE[1])
    test = data._load_files(folder, data.TEST_FILES)
    classes = list(meta["label_names"])
    return [
        {
            "index": i,
            "label": classes[int(test.y[i])],
            "png": base64.b64encode(png(test.x[i].numpy())).decode(),
        }
        for i in range(COUNT)
    ]


def load() -> list[dict[str, Any]]:
    """The bundled samples: [{index, label, png: bytes}]."""
    rows = json.loads(PATH.read_text())
    return [{**row, "png": base64.b64decode(row["png"])} for row in rows]


if __name__ == "__main__":
    print(json.dumps(from_data(sys.argv[1] if len(sys.argv) > 1 else None), indent=1))
