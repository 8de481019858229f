"""`wsi-detect bench tumour`: H2G-Net seconds per slide, split by stage, and memory.

For each slide (phantoms of the given sizes, written once into the cache, or --slides),
through the job's lower steps (`prepare_run` + `run_tiles`, then the detector's
`finish` and `postprocess`, exactly what `wsi-detect tumour` runs):

* stage 1 (patch classifier over every tissue patch): seconds, patches, seconds per mm²
  of slide and per 1000 patches;
* stage 2 (refinement: low-resolution read + U-Net at refine_size² + maps): seconds, and
  its share of the run (the paper: ~1 %);
* post-processing (a slider move): seconds;
* peak RSS rise during each stage (psutil, sampled every 10 ms): flat in slide size when
  the run streams.

A 40k × 30k phantom takes long to write on a small CPU; the table extrapolates stage 1
per mm² of slide from the measured sizes to `--extrapolate W H` and says so. Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from . import bench_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 6144, 16384, 12288],
                        metavar="W H", help="phantom sizes as W H pairs (default 8192 6144 "
                                            "16384 12288)")
    parser.add_argument("--slides", nargs="*", default=None,
                        help="measure these slides instead of phantoms")
    parser.add_argument("--model", default="tumour",
                        help="model (default: the bundled 'tumour'); 'random' = random "
                             "weights at the default widths")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "napari-wsi-detect" / "bench",
                        help="where phantom slides are kept between runs")
    parser.add_argument("--extrapolate", type=int, nargs=2, default=(40000, 30000),
                        metavar=("W", "H"), help="slide size the table extrapolates to")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")


def _model(name: str, device: Any) -> tuple[Any, dict]:
    from ..models.h2g import H2GNet

    return bench_model(name, device, H2GNet, "tumour", 1.0)


def measure(path: Path, net: Any, config: dict, device: Any, readers: int = 2) -> dict:
    """Stage-by-stage figures of one slide (see the module docstring)."""
    import torch

    from ..detectors import get_detector
    from ..detectors.job import prepare_run, run_tiles
    from ..engine.heatmap import HeatmapStore
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask
    from .wholeslide import _RssSampler

    det = get_detector("tumour")
    net = net.to(device).eval().to(memory_format=torch.channels_last)
    with open_slide(path) as slide:
        t0 = time.perf_counter()
        tissue = compute_tissue_mask(slide)
        t_tissue = time.perf_counter() - t0
        prep = prepare_run(det, slide, net, config, options={}, device=device, tissue=tissue)
        store = HeatmapStore.create(None, prep.geometry, prep.roi_cells, "bench")
        with _RssSampler() as rss1:
            t0 = time.perf_counter()
            runner = run_tiles(prep, slide, store=store, n_readers=readers)
            for _ in runner:
                pass
            t_stage1 = time.perf_counter() - t0
        with _RssSampler() as rss2:
            t0 = time.perf_counter()
            det.finish(store, slide, net, config, {})
            t_stage2 = time.perf_counter() - t0
        from ..engine.maps import read_maps

        maps = read_maps(store)
        values = det.defaults(config)
        t0 = time.perf_counter()
        found = det.postprocess(store.to_numpy(), prep.geometry, values, maps=maps)
        t_post = time.perf_counter() - t0
        w0, h0 = slide.dimensions
        mpp = slide.mpp or 0.243
    patches = sum(r.rows * r.cols for r in prep.rois)
    area_mm2 = w0 * h0 * (mpp / 1000.0) ** 2
    total = t_tissue + t_stage1 + t_stage2 + t_post
    return {
        "slide": str(path), "size": [int(w0), int(h0)], "mpp": mpp,
        "slide_mm2": round(area_mm2, 2), "patches": int(patches), "rois": len(prep.rois),
        "tissue_s": round(t_tissue, 3), "stage1_s": round(t_stage1, 3),
        "stage2_s": round(t_stage2, 3), "postprocess_s": round(t_post, 4),
        "total_s": round(total, 3), "stage2_share": round(t_stage2 / total, 4),
        "stage1_s_per_mm2": round(t_stage1 / area_mm2, 4),
        "stage1_s_per_1000_patches": round(1000 * t_stage1 / max(1, patches), 2),
        "io_wait_fraction": round(runner.stats.io_wait_fraction, 3),
        "rss_rise_stage1_mb": round((rss1.peak - rss1.start_rss) / 2**20, 1),
        "rss_rise_stage2_mb": round((rss2.peak - rss2.start_rss) / 2**20, 1),
        "tumour_area_mm2": found.extra.get("tumour_area_mm2"),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.device import resolve_device
    from .wholeslide import _phantom

    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = resolve_device(args.device)
    net, config = _model(args.model, device)
    if args.slides:
        paths = [Path(p) for p in args.slides]
    else:
        if len(args.sizes) % 2:
            raise SystemExit("--sizes takes W H pairs")
        pairs = list(zip(args.sizes[0::2], args.sizes[1::2], strict=True))
        paths = [_phantom(args.cache, (w, h)) for w, h in pairs]
    rows = [measure(p, net, config, device, args.readers) for p in paths]
    ew, eh = args.extrapolate
    per_mm2 = max(r["stage1_s_per_mm2"] for r in rows[-1:])  # the largest slide measured
    mpp = rows[-1]["mpp"]
    ext_mm2 = ew * eh * (mpp / 1000.0) ** 2
    stage2 = max(r["stage2_s"] for r in rows)
    est = {"size": [ew, eh], "slide_mm2": round(ext_mm2, 1),
           "stage1_s": round(per_mm2 * ext_mm2, 1), "stage2_s": round(stage2, 2),
           "note": "extrapolated: stage 1 per mm² of the largest slide measured x the "
                   "slide's area (same tissue density); stage 2 does not grow with size"}
    est["stage2_share"] = round(est["stage2_s"] / (est["stage1_s"] + est["stage2_s"]), 4)
    print(f"threads {torch.get_num_threads()}, device {device}, model {args.model}")
    head = ("size", "patches", "stage1 s", "stage2 s", "post s", "s/mm2", "stage2 %",
            "RSS+ st1 MB", "RSS+ st2 MB")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(v) for v in (
            f"{r['size'][0]}x{r['size'][1]}", r["patches"], r["stage1_s"], r["stage2_s"],
            r["postprocess_s"], r["stage1_s_per_mm2"], round(100 * r["stage2_share"], 2),
            r["rss_rise_stage1_mb"], r["rss_rise_stage2_mb"])))
    print(f"{ew}x{eh} (extrapolated): stage 1 ≈ {est['stage1_s']} s, stage 2 ≈ "
          f"{est['stage2_s']} s ({100 * est['stage2_share']:.1f} %)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "extrapolated": est}, indent=1))
    return 0
