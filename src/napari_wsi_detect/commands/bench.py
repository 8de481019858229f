"""`wsi-detect bench NAME ...`: speed figures measured side by side in one run."""

from __future__ import annotations

import argparse
import importlib

# name -> one-line description; the module napari_wsi_detect.benchmarks.<name> runs it.
BENCHMARKS = {
    "io": "slide reading: our pyramid vs raw OpenSlide, open-to-first-screen, pan memory",
    "scannet": "Fast ScanNet: dense vs patchwise vs shift-and-stitch, alpha cost, GFLOP/s",
    "backends": "inference backends side by side: ms/ROI, x fp32, GFLOP/s, max |dp|, FROC",
    "wholeslide": "whole-slide detection throughput, peak RSS, I/O wait fraction",
    "prefetch": "training input pipeline: compute-idle fraction with 0 vs N producers",
    "batch": "cohort on dask: throughput 1 vs 2 workers, per-slide scheduling overhead",
    "tumour": "H2G-Net seconds per slide by stage (patches, refinement), memory vs size",
    "mitoses": "SegMitos seconds per 2048² field and per mm² of tissue, memory vs size",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios measured in one run)")
    bsub = p.add_subparsers(dest="bench", metavar="NAME")
    for name, help_text in BENCHMARKS.items():
        try:
            module = importlib.import_module(f"napari_wsi_detect.benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"napari_wsi_detect.benchmarks.{name}":
                continue
            raise
        bp = bsub.add_parser(name, help=help_text)
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)
    p.set_defaults(func=lambda args: p.print_help() or 2)
