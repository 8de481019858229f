"""`wsi-detect bench prefetch`: how long the training loop waits for data, 0 vs N producers.

Writes phantom slides (tumour and normal), then runs the same training loop (real
ScanNetFCN forward + backward + SGD step on augmented 244 px patches) twice, side by side
in one run: once reading and augmenting patches synchronously in the loop (0 producers),
once with N prefetching producer processes. The compute-idle fraction is the share of the
loop's wall time spent waiting for a batch; the ratio of the two and the step-rate
speed-up are what to read (absolute times depend on the machine and its load).

On a machine with few cores the producers compete with torch for the same cores, so the
gain is bounded by the spare CPU; say how many cores you had when you quote figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--producers", type=int, default=2, help="N for the prefetching run")
    p.add_argument("--steps", type=int, default=12, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (process start-up)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=float, default=0.0625, help="model width multiplier")
    p.add_argument("--queue-size", type=int, default=4)
    p.add_argument("--slides", type=int, default=2, help="phantom slides (one is normal)")
    p.add_argument("--size", type=int, nargs=2, default=(6144, 4096), metavar=("W", "H"))
    p.add_argument("--workdir", default=None, help="keep the phantoms here (default: temp)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads for both runs (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _loop(source: object, n_producers: int, args: argparse.Namespace) -> dict:
    import torch

    from ..models.scannet import ScanNetFCN
    from ..training.loop import to_input
    from ..training.losses import cross_entropy
    from ..training.prefetch import Prefetcher

    torch.manual_seed(0)
    model = ScanNetFCN(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dev = torch.device("cpu")
    with Prefetcher(source, n_producers, args.queue_size) as pf:
        t0 = w0 = 0.0
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0, w0 = time.perf_counter(), pf.wait_time
            images, labels = pf.get()
            loss = cross_entropy(model(to_input(images, (0.5,) * 3, (0.25,) * 3, dev)),
                                 torch.from_numpy(labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
        total = time.perf_counter() - t0
        wait = pf.wait_time - w0
    return {"producers": n_producers, "steps": args.steps, "seconds": round(total, 3),
            "wait_s": round(wait, 3), "idle_fraction": round(wait / total, 4),
            "steps_per_s": round(args.steps / total, 4)}


def run(args: argparse.Namespace) -> int:
    from ..phantom import write_phantom
    from ..training.patches import PatchBatchSource
    from ..training.sampler import PatchSampler
    from ..training.slides import load_candidates, pair_annotations

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="wsi-bench-prefetch-")
        work = Path(tmp.name)
    try:
        t0 = time.perf_counter()
        slides = []
        for i in range(args.slides):
            kind = "normal" if i == args.slides - 1 and args.slides > 1 else "tumor"
            path = work / f"{kind}_{100 + i:03d}.tif"
            if not path.exists():
                write_phantom(path, seed=100 + i, size=tuple(args.size), tumour=kind == "tumor")
            slides.append(path)
        t_phantom = time.perf_counter() - t0
        cands = load_candidates(slides, pair_annotations(slides, None))
        source = PatchBatchSource(PatchSampler(cands), args.batch_size, seed=0)
        sync = _loop(source, 0, args)
        pref = _loop(source, args.producers, args)
        result = {
            "benchmark": "prefetch",
            "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "slides": [str(s.name) for s in slides], "slide_size": list(args.size),
            "phantom_write_s": round(t_phantom, 2),
            "batch_size": args.batch_size, "width": args.width,
            "torch_threads": __import__("torch").get_num_threads(),
            "synchronous": sync, "prefetch": pref,
            "idle_fraction_ratio_sync_over_prefetch": round(
                sync["idle_fraction"] / max(pref["idle_fraction"], 1e-4), 2),
            "speedup_steps_per_s": round(pref["steps_per_s"] / sync["steps_per_s"], 3),
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"prefetch benchmark: {result['cpu_count']} CPUs (load {result['load_avg_1min']}),"
              f" batch {args.batch_size}, width {args.width}, {args.steps} timed steps")
        for r in (sync, pref):
            print(f"  {r['producers']} producers: {r['steps_per_s']:.3f} steps/s, compute idle "
                  f"{100 * r['idle_fraction']:.1f} % ({r['wait_s']:.2f} s of {r['seconds']:.2f} s)")
        print(f"  idle fraction ratio (0 / {args.producers} producers): "
              f"{result['idle_fraction_ratio_sync_over_prefetch']}×, step-rate speed-up "
              f"{result['speedup_steps_per_s']}×")
    return 0
