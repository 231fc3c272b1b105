"""Which Serve backend is faster on this CPU: eager torch (Predictor) or ONNX Runtime on the
graph exported at deploy time. 1 thread each, like one replica; untrained weights of each
model flavor (speed does not depend on the values). Not part of the pytest run.

    .venv/bin/python tests/benchmarks/serve_backends.py

The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def rate(backend, batch: int, seconds: float = 2.0) -> float:
    import torch

    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    backend.probabilities(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend.probabilities(x)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    import numpy as np
    import torch

    from modresnet import config as configs
    from modresnet.checkpoint import load_model, save_model
    from modresnet.model import build_model
    from serve.backends.onnx_runtime import OnnxBackend
    from serve.backends.torch_eager import TorchBackend

    torch.set_num_threads(1)
    out = {}
    for preset in ("debug", "paper"):
        cfg = configs.resolve(preset)
        folder = Path(tempfile.mkdtemp()) / preset
        classes = tuple(f"c{i}" for i in range(cfg.model.num_classes))
        save_model(folder, build_model(cfg.model).eval(), cfg, classes, 0, {})
        loaded = load_model(folder)
        torch_b, onnx_b = TorchBackend(loaded), OnnxBackend(loaded, threads=1)
        x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        diff = float(np.abs(torch_b.probabilities(x) - onnx_b.probabilities(x)).max())
        for batch in (1, 8, 32):
            t, o = rate(torch_b, batch), rate(onnx_b, batch)
            out[f"{preset}/batch{batch}"] = {
                "torch_img_s": round(t, 1),
                "onnx_img_s": round(o, 1),
                "onnx_speedup": round(o / t, 2),
            }
            print(
                f"{preset:<6} batch {batch:>2}: torch {t:8.1f} img/s  onnx {o:8.1f} img/s  "
                f"x{o / t:.2f}",
                flush=True,
            )
        out[f"{preset}/max_abs_diff"] = diff
        out[f"{preset}/onnx_export_s"] = round(onnx_b.export_s, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
