"""`wsi-detect bench NAME`: each module here has `add_arguments(parser)` and `run(args)`.

Benchmarks report ratios measured side by side in one run; tests never assert timings.
"""

from __future__ import annotations

from typing import Any


def bench_model(name: str, device: Any, build: Any, task: str, mpp: float
                ) -> tuple[Any, dict]:
    """(net, config) for a benchmark: `name` "random" = `build()` with random weights
    (seed 0) and a plain normalisation, else a model file or a bundled name."""
    if name == "random":
        import torch

        torch.manual_seed(0)
        net = build()
        config = {**net.config(), "task": task, "mpp": mpp,
                  "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}
        return net.to(device).eval(), config
    from ..models.io import load_model

    return load_model(name, device)
