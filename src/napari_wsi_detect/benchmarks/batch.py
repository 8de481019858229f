"""`wsi-detect bench batch`: cohort throughput on dask, 1 vs 2 workers, in one run.

On a cohort of phantom slides (written once and cached), with the bundled demo model:

* direct: the slides one after the other in this process through the one job (model
  loaded once), no dask: the per-slide time the cluster is compared with;
* batch with 1 worker and with 2 workers (LocalCluster, fresh output folders): cluster
  start-up, then slides per second after it; the ratio 2 workers / 1 worker;
* per-slide scheduling overhead: (1-worker wall after start-up - sum of the worker's
  task times) / slides; 1-worker per-slide time / direct per-slide time; a worker's
  first slide (imports + model load) apart from the median of its later ones;
* peak RSS of each worker after each of its slides (flat = memory does not grow with
  the cohort);
* the rerun of a finished cohort (every slide skipped, no cluster): its wall time.

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slides", type=int, default=6, help="cohort size (default 6)")
    parser.add_argument("--size", type=int, nargs=2, default=(2048, 1536), metavar=("W", "H"),
                        help="phantom size (default 2048 1536)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "napari-wsi-detect" / "bench-batch",
                        help="where the phantom cohort is kept between runs")
    parser.add_argument("--roi-cells", type=int, default=None)
    parser.add_argument("--workers", type=int, nargs=2, default=(1, 2), metavar=("A", "B"),
                        help="the two worker counts compared (default 1 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")


def _cohort(args: argparse.Namespace) -> list[Path]:
    from ..phantom import write_phantom

    folder = args.cache / f"{args.size[0]}x{args.size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for seed in range(args.slides):
        path = folder / f"bench{seed:03d}.tif"
        if not path.is_file():
            write_phantom(path, seed=seed, size=tuple(args.size), mpp=0.243)
        slides.append(path)
    return slides


def _direct(slides: list[Path], work: Path, roi_cells: int | None, threads: int) -> float:
    """Seconds per slide, in this process, model loaded once (not timed)."""
    import torch

    from ..detectors.job import DetectionRequest, detect
    from ..models.io import load_model

    torch.set_num_threads(threads)
    net, config = load_model("demo", "cpu")
    t = time.perf_counter()
    for s in slides:
        detect(DetectionRequest(task="metastases", slide=str(s), device="cpu",
                                out=str(work / "direct" / s.stem), roi_cells=roi_cells),
               model=(net, config))
    return (time.perf_counter() - t) / len(slides)


def _batch(slides: list[Path], out: Path, workers: int, roi_cells: int | None
           ) -> dict[str, Any]:
    from ..batch import run_batch

    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "cluster":
            marks["cluster"] = time.perf_counter()
            marks["threads"] = data["torch_threads"]

    report = run_batch(slides, "metastases", out, workers=workers, device="cpu",
                       roi_cells=roi_cells, on_event=on_event)
    wall = time.perf_counter() - t0
    rows = list(report.rows.values())
    assert all(r["status"] == "done" for r in rows), [r.get("error") for r in rows]
    startup = marks["cluster"] - t0
    after = wall - startup
    by_worker: dict[str, list[float]] = {}
    # A process's peak RSS never decreases, so this order is each worker's slide order.
    for r in sorted(rows, key=lambda r: r["worker_peak_rss_mb"] or 0):
        by_worker.setdefault(r["worker"], []).append(r["worker_peak_rss_mb"])
    warm = sorted(r["seconds"] for w in by_worker
                  for r in sorted((r for r in rows if r["worker"] == w),
                                  key=lambda r: r["started_unix"])[1:])
    return {
        "workers": workers, "torch_threads": marks["threads"], "wall_s": wall,
        # a worker's first slide pays its imports and the model load
        "first_task_s": [min((r for r in rows if r["worker"] == w),
                             key=lambda r: r["started_unix"])["seconds"] for w in by_worker],
        "warm_task_median_s": warm[len(warm) // 2] if warm else None,
        "rss_series_mb": {w: v for w, v in by_worker.items()},
        "startup_s": startup, "after_startup_s": after,
        "slides_per_s": len(rows) / after,
        "task_s_sum": sum(r["seconds"] for r in rows),
        "rss_first_last_mb": {w: (v[0], v[-1]) for w, v in by_worker.items()},
        "slides_per_worker": {w: len(v) for w, v in by_worker.items()},
    }


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ..batch import run_batch
    from ..batch.cluster import _cores

    slides = _cohort(args)
    work = Path(tempfile.mkdtemp(prefix="wsi-bench-batch-"))
    try:
        a, b = args.workers
        res_a = _batch(slides, work / f"w{a}", a, args.roi_cells)
        res_b = _batch(slides, work / f"w{b}", b, args.roi_cells)
        direct = _direct(slides, work, args.roi_cells, res_a["torch_threads"])
        t = time.perf_counter()
        rerun = run_batch(slides, "metastases", work / f"w{a}", workers=a, device="cpu",
                          roi_cells=args.roi_cells)
        rerun_s = time.perf_counter() - t
        assert not rerun.model_work
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(slides)
    per_slide_a = res_a["after_startup_s"] / n
    overhead_s = (res_a["after_startup_s"] - res_a["task_s_sum"]) / n
    out = {
        "slides": n, "size": list(args.size), "cores": _cores(),
        "direct_s_per_slide": direct,
        "batch": [res_a, res_b],
        "throughput_ratio": res_b["slides_per_s"] / res_a["slides_per_s"],
        "scheduling_overhead_s_per_slide": overhead_s,
        "batch_vs_direct_per_slide": per_slide_a / direct,
        "warm_task_vs_direct": (res_a["warm_task_median_s"] or 0) / direct,
        "rerun_finished_cohort_s": rerun_s,
    }
    print(f"cohort: {n} phantoms {args.size[0]}x{args.size[1]}, {out['cores']} cores, "
          "demo model, cpu")
    print(f"direct (one process, no dask, {res_a['torch_threads']} torch threads): "
          f"{direct:.2f} s/slide")
    for r in (res_a, res_b):
        rss = "; ".join(f"{first:.0f} -> {last:.0f} MB"
                        for first, last in r["rss_first_last_mb"].values())
        print(f"batch {r['workers']} worker(s) x {r['torch_threads']} threads: start-up "
              f"{r['startup_s']:.1f} s, then {r['slides_per_s']:.3f} slides/s "
              f"({r['after_startup_s']:.1f} s); worker peak RSS first -> last slide: {rss}")
    for r in (res_a, res_b):
        print(f"  {r['workers']} worker(s): first slide per worker "
              + ", ".join(f"{v:.2f}" for v in r["first_task_s"])
              + f" s (imports + model load), later slides median "
              f"{r['warm_task_median_s']:.2f} s; peak RSS per slide: "
              + " | ".join(" ".join(f"{m:.0f}" for m in v)
                           for v in r["rss_series_mb"].values()))
    print(f"throughput {b} / {a} workers: {out['throughput_ratio']:.2f}x")
    print(f"scheduling overhead ({a} worker): {overhead_s:.3f} s/slide "
          f"(batch per-slide time / direct = {out['batch_vs_direct_per_slide']:.2f}; a warm "
          f"worker's slide / direct = {out['warm_task_vs_direct']:.2f})")
    print(f"rerun of the finished cohort (all skipped, no cluster): {rerun_s:.2f} s")
    if args.json:
        from .._atomic import write_json_atomic

        write_json_atomic(args.json, out)
        print(f"json: {args.json}")
    print(json.dumps({"throughput_ratio": round(out["throughput_ratio"], 3),
                      "overhead_s_per_slide": round(overhead_s, 3)}))
    return 0
