"""`wsi-detect bench wholeslide --breakdown`: where the time of one real run goes.

The default detection (`detectors.job.detection_events`, the bundled metastasis model,
the CLI's outputs into a run folder) on a phantom, once per configuration named on the
command line (`--compare-roi-cells`, `--backends`), one after another in the same
process, so "before" and "after" share the machine's load. Per run:

* slide open, tissue mask (its own timer), the tiles phase split by the runner's own
  timers: tensor build (stack + normalisation), network (forward + copy back), store
  writes, I/O wait; JPEG/tile decode summed over the reader threads (they overlap the
  network) and, apart, the same ROIs decoded by one thread on a freshly opened slide;
* stitch (store -> map), post-processing (regions), outputs (heatmap/regions/summary
  commit, then the OME-Zarr copy) from `DetectionResult.timings`;
* wall and process CPU seconds for every phase (CPU s / wall s = cores we actually got:
  the development machine is shared, so wall times alone mislead);
* tissue Mpx, tissue Mpx/s and the extrapolation to a 100k x 80k slide with 40 % tissue
  (see `extrapolate`).

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

# The issue's target slide: 100 000 x 80 000 px at 0.243 µm/px, 40 % tissue.
TARGET_SHAPE = (80_000, 100_000)
TARGET_TISSUE = 0.40


class _Clock:
    """Wall and process-CPU seconds of a block (CPU counts every thread of the process)."""

    def __enter__(self) -> _Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def decode_alone(path: Path, prep: Any) -> tuple[float, float]:
    """(wall, cpu) s to read every planned ROI once, one thread, on a freshly opened
    slide (empty tile cache): the decode cost without the network competing for cores."""
    from ..engine.reader import read_roi
    from ..slide import open_slide

    with open_slide(path) as slide, _Clock() as c:
        for roi in prep.rois:
            read_roi(slide, prep.geometry, roi)
    return c.wall, c.cpu


def one_run(path: Path, work: Path, *, roi_cells: int | None, backend: str,
            device: str, readers: int, model: str = "demo") -> dict[str, Any]:
    """One default detection into `work`, its phases timed (see the module docstring)."""
    import torch

    from ..detectors.job import DetectionRequest, JobOutcome, RunStarted, detection_events
    from ..engine.run import HeatmapTile
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask

    out = work / f"run-T{roi_cells or 'default'}-{backend}"
    shutil.rmtree(out, ignore_errors=True)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load = _load()
    with _Clock() as c_open:
        slide = open_slide(path)
    try:
        with _Clock() as c_tissue:
            tissue = compute_tissue_mask(slide)
        fields = {"task": "metastases", "slide": str(path), "model": model,
                  "device": device, "out": str(out), "roi_cells": roi_cells,
                  "n_readers": readers}
        if backend != "fp32" or "backend" in DetectionRequest.__dataclass_fields__:
            fields["backend"] = backend  # a TypeError names a missing backend option
        request = DetectionRequest(**fields)
        phases: dict[str, _Clock] = {}
        started: RunStarted | None = None
        outcome: JobOutcome | None = None
        clock = _Clock().__enter__()
        for event in detection_events(request, slide=slide, tissue_mask=tissue):
            if isinstance(event, RunStarted):
                started = event
                clock.__exit__()
                phases["prepare"] = clock
                clock = _Clock().__enter__()
            elif isinstance(event, HeatmapTile) and event.done == event.total:
                clock.__exit__()
                phases["tiles"] = clock
                clock = _Clock().__enter__()
            elif isinstance(event, JobOutcome):
                clock.__exit__()
                phases["finish"] = clock
                outcome = event
    finally:
        slide.close()
    assert started is not None and outcome is not None
    t, st = outcome.result.timings, outcome.stats
    return {
        "roi_cells": outcome.result.parameters["roi_cells"],
        "roi_pixels": outcome.result.parameters["roi_pixels"],
        "backend": backend, "rois": outcome.done, "load_before": load,
        "open": (c_open.wall, c_open.cpu), "tissue": (c_tissue.wall, c_tissue.cpu),
        "prepare": (phases["prepare"].wall, phases["prepare"].cpu),
        "tiles": (phases["tiles"].wall, phases["tiles"].cpu),
        "finish": (phases["finish"].wall, phases["finish"].cpu),
        "decode_in_run_summed": st["read_s_summed"], "tensor": st["tensor_s"],
        "net": st["net_s"], "store": st["store_s"], "io_wait": st["io_wait_s"],
        "io_wait_fraction": st["io_wait_fraction"],
        "stitch": t.get("stitch_s"), "postprocess": t.get("postprocess_s"),
        "outputs": t.get("outputs_s"), "ngff": t.get("ngff_s"),
        "tissue_mpx": t["tissue_megapixels"], "tissue_mpx_per_s": t.get("tissue_mpx_per_s"),
        "regions": len(outcome.result.regions), "slide_score": outcome.result.slide_score,
        "model": model, "device": device,
        "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                        if torch.device(device).type == "cuda" else None),
        "slide_mpx": started.geometry.height0 * started.geometry.width0 / 1e6,
        "tissue_fraction": float(tissue.tissue_fraction),
    }


def extrapolate(row: dict[str, Any]) -> dict[str, float]:
    """Seconds for the TARGET slide from this run: the tiles phase scales with tissue
    Mpx (3 200 Mpx / this run's), everything per slide area (tissue mask, stitch, post-
    processing, outputs: their inputs are the mask and the map, both proportional to the
    slide area) with the slide area (8 000 Mpx / this one's). Assumes the target's ROIs
    hold tissue as densely as the phantom's (the ROI area computed per tissue Mpx)."""
    target_tissue = TARGET_SHAPE[0] * TARGET_SHAPE[1] * TARGET_TISSUE / 1e6
    k_tissue = target_tissue / row["tissue_mpx"]
    k_area = TARGET_SHAPE[0] * TARGET_SHAPE[1] / 1e6 / row["slide_mpx"]
    per_area = row["tissue"][0] + row["finish"][0]
    per_area_cpu = row["tissue"][1] + row["finish"][1]
    return {"target_tissue_mpx": target_tissue,
            "wall_s": row["tiles"][0] * k_tissue + per_area * k_area + row["open"][0],
            "cpu_s": row["tiles"][1] * k_tissue + per_area_cpu * k_area + row["open"][1]}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{v[0]:.2f} / {v[1]:.2f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


STAGES = (
    ("slide open", "open"), ("tissue mask", "tissue"),
    ("model load + plan + store", "prepare"),
    ("tiles phase (all below overlap)", "tiles"),
    ("  decode, summed over readers", "decode_in_run_summed"),
    ("  decode alone, 1 thread", "decode_alone"),
    ("  tensor build + normalise", "tensor"), ("  network (+ copy back)", "net"),
    ("  store writes", "store"), ("  I/O wait", "io_wait"),
    ("finish phase", "finish"), ("  stitch (store -> map)", "stitch"),
    ("  post-processing (regions)", "postprocess"),
    ("  outputs: zarr/geojson/summary", "outputs"), ("  outputs: OME-Zarr", "ngff"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    heads = [f"T={r['roi_cells']} ({r['roi_pixels']} px) {r['backend']}" for r in rows]
    width = max(24, *(len(h) for h in heads))
    print(f"{'stage (s; wall / CPU where two)':<34}" + "".join(f"{h:>{width + 2}}" for h in heads))
    for label, key in STAGES:
        print(f"{label:<34}" + "".join(f"{_fmt(r.get(key)):>{width + 2}}" for r in rows))
    extra = (("ROIs", "rois"), ("tissue Mpx", "tissue_mpx"),
             ("tissue Mpx/s (tiles phase)", "tissue_mpx_per_s"),
             ("I/O-wait share", "io_wait_fraction"), ("regions", "regions"),
             ("peak GPU memory MB", "peak_gpu_mb"),
             ("load avg before run", "load_before"))
    for label, key in extra:
        print(f"{label:<34}" + "".join(f"{_fmt(r.get(key)):>{width + 2}}" for r in rows))
    for label, key in (("100k x 80k, 40 % tissue: wall s", "wall_s"),
                       ("  same, process CPU s", "cpu_s")):
        print(f"{label:<34}" + "".join(f"{r['extrapolated'][key]:>{width + 2}.0f}"
                                         for r in rows))


def run_breakdown(args: argparse.Namespace, path: Path) -> int:
    import torch

    from ..detectors import get_detector
    from ..detectors.job import load_checked_model, prepare_run
    from ..exports import ngff
    from ..models.device import resolve_device
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask

    ngff._writer()  # ome-zarr's first import (~3 s) is not the first run's output cost
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    configs = [(t or None, b) for t in (args.compare_roi_cells or [0]) for b in args.backends]
    print(f"slide {path} ; device {dev} ; torch threads {torch.get_num_threads()} ; "
          f"readers {args.readers} ; load avg {_load()}", flush=True)
    rows = []
    for cells, backend in configs:
        row = one_run(path, work, roi_cells=cells, backend=backend, device=str(dev),
                      readers=args.readers, model=args.model)
        detector = get_detector("metastases")
        with open_slide(path) as slide:
            net, config = load_checked_model(detector, args.model, dev)
            prep = prepare_run(detector, slide, net, config,
                               options=detector.resolve_options({}), device=dev,
                               roi_cells=row["roi_cells"],
                               tissue=compute_tissue_mask(slide))
        row["decode_alone"] = decode_alone(path, prep)
        row["extrapolated"] = extrapolate(row)
        rows.append(row)
        print(f"  done: T={row['roi_cells']} {backend}: tiles {row['tiles'][0]:.1f} s wall, "
              f"{row['tissue_mpx_per_s']} tissue Mpx/s, load {_load()}", flush=True)
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0
