"""`wsi-detect bench wholeslide`: whole-slide Fast ScanNet throughput in one run.

On a phantom slide (written once and cached), with random-weight ScanNet FCNs at the
CPU default width and at width 1.0 (full VGG16; ROIs subsampled, the table says how
many), alpha = 2, the real streaming runner:

* tissue megapixels per second (level-0 tissue area of the computed ROIs / run time);
* peak RSS (psutil, sampled every 10 ms in a thread) and its rise during the run, next to
  the size of the ROI buffers the runner may hold (queue + readers + batch);
* the fraction of the run the model waited for slide I/O;
* post-processing time for the whole map (and for a synthetic 5000 x 5000 map with 30
  lesions on a noisy background: an 80 000 px slide at alpha = 2), the slider cost.

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The torch-free copy of models.scannet.DEFAULT_CPU_WIDTH: building the CLI parser
    # must not import torch.
    from .scannet import DEFAULT_CPU_WIDTH

    parser.add_argument("--size", type=int, nargs=2, default=(16384, 12288),
                        metavar=("W", "H"), help="phantom size (default 16384 12288)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "napari-wsi-detect" / "bench",
                        help="where the phantom slide is kept between runs")
    parser.add_argument("--widths", type=float, nargs="+", default=[DEFAULT_CPU_WIDTH, 1.0],
                        help=f"model widths (default {DEFAULT_CPU_WIDTH} 1.0)")
    parser.add_argument("--max-rois-full", type=int, default=3,
                        help="ROIs timed at width 1.0 (evenly subsampled; default 3)")
    parser.add_argument("--max-rois", type=int, default=0,
                        help="cap ROIs at every width (0 = all tissue ROIs)")
    parser.add_argument("--alpha", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--roi-cells", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="4096 x 3072 phantom, default width only, at most 12 ROIs")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--breakdown", type=Path, default=None, metavar="SLIDE",
                        help="instead: time every stage of the default detection (bundled "
                             "model, run folder outputs) on SLIDE (benchmarks/breakdown.py)")
    parser.add_argument("--compare-roi-cells", type=int, nargs="+", default=None,
                        metavar="T", help="--breakdown: one run per ROI size T (0 = the "
                                          "default), side by side")
    parser.add_argument("--backends", nargs="+", default=["fp32"],
                        help="--breakdown: one run per inference backend (default fp32)")
    parser.add_argument("--model", default="demo",
                        help="--breakdown: model name or file (default: the bundled demo)")
    parser.add_argument("--work", type=Path, default=Path("wsi-detect-breakdown"),
                        help="--breakdown: folder for the run folders")


class _RssSampler:
    """Peak resident set size of this process, sampled in a thread."""

    def __init__(self, period: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self.period = period
        self.start_rss = self._proc.memory_info().rss
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.period)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _phantom(cache: Path, size: tuple[int, int]) -> Path:
    from ..phantom import write_phantom

    path = cache / f"phantom-{size[0]}x{size[1]}-seed0.tif"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing phantom {path} (once) ...", flush=True)
        write_phantom(path, seed=0, size=tuple(size), mpp=0.243)
    return path


def _tissue(slide: Any) -> tuple[Any, str]:
    from ..errors import WsiDetectError
    from ..slide.tissue import compute_tissue_mask

    try:
        mask = compute_tissue_mask(slide)
        if mask.tissue_fraction > 0:
            return mask, "default"
    except WsiDetectError:
        pass
    # The default mask's pen rejection can flag phantom haematoxylin as ink; measuring
    # throughput needs the tissue, so fall back and say so.
    return compute_tissue_mask(slide, exclude_pen=False), "exclude_pen=False (default empty)"


def _synthetic_map(rows: int = 5000, cols: int = 5000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((rows, cols), dtype=np.float32) * 0.3
    yy, xx = np.ogrid[:rows, :cols]
    for _ in range(30):
        cy, cx, r = rng.integers(0, rows), rng.integers(0, cols), rng.integers(5, 150)
        sl = (slice(max(cy - r, 0), cy + r), slice(max(cx - r, 0), cx + r))
        inside = (yy[sl[0]] - cy) ** 2 + (xx[:, sl[1]] - cx) ** 2 < r * r
        p[sl][inside] = 0.6 + 0.4 * rng.random(inside.sum(), dtype=np.float32)
    # Speckle false positives for the opening to remove.
    idx = rng.integers(0, rows * cols, size=2000)
    p.flat[idx] = 0.9
    return p


def _time(fn: Any, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(args: argparse.Namespace) -> int:
    import torch

    from ..detectors import get_detector
    from ..detectors.job import prepare_run, run_tiles
    from ..engine.heatmap import HeatmapStore
    from ..engine.plan import MapGeometry
    from ..models.device import resolve_device
    from ..models.scannet import DEFAULT_CPU_WIDTH, ScanNetFCN
    from ..postprocess.regions import extract_regions
    from ..slide import open_slide

    if args.breakdown is not None:
        from .breakdown import run_breakdown

        return run_breakdown(args, args.breakdown)
    size = (4096, 3072) if args.quick else tuple(args.size)
    widths = [DEFAULT_CPU_WIDTH] if args.quick else list(args.widths)
    max_rois = 12 if args.quick else args.max_rois
    dev = resolve_device(args.device)
    path = _phantom(args.cache, size)
    detector = get_detector("metastases")
    options = {"alpha": args.alpha}
    rows_out: list[dict[str, Any]] = []
    with open_slide(path) as slide:
        t = time.perf_counter()
        tissue, tissue_note = _tissue(slide)
        tissue_s = time.perf_counter() - t

        def prepare(width: float, net: Any = None) -> Any:
            # The same plan, forward and store fingerprint as a real run (detectors/job).
            config = {"architecture": "scannet-fcn", "width": width, "mpp": 0.243,
                      "patch": 244, "stride": 32}
            return prepare_run(detector, slide, net, config, options=options, device=dev,
                               model_arg=f"random-w{width}", roi_cells=args.roi_cells,
                               batch_size=args.batch_size, tissue=tissue)

        plan = prepare(widths[0], ScanNetFCN(width=widths[0]))
        geometry, t_cells, all_rois = plan.geometry, plan.roi_cells, plan.rois
        batch = plan.batch_size
        roi_px = geometry.read_size(t_cells)
        roi_bytes = roi_px * roi_px * 3
        buffers = 2 * batch + args.readers + batch
        print(f"slide {path.name}: {size[0]}x{size[1]} px, tissue {100 * tissue.tissue_fraction:.1f} % "
              f"(mask {tissue_note}, {tissue_s:.2f} s); map {geometry.rows}x{geometry.cols} cells; "
              f"ROI {t_cells} cells = {roi_px} px; {len(all_rois)} tissue ROIs; device {dev}; "
              f"batch {batch}; readers {args.readers}; torch threads {torch.get_num_threads()}")
        last_map = None
        for width in widths:
            cap = args.max_rois_full if width >= 1.0 else max_rois
            rois = all_rois
            if cap and len(rois) > cap:
                pick = np.linspace(0, len(rois) - 1, cap).round().astype(int)
                rois = [all_rois[i] for i in sorted(set(pick.tolist()))]
            torch.manual_seed(0)
            net = ScanNetFCN(width=width).eval().to(dev).to(memory_format=torch.channels_last)
            prep = prepare(width, net)
            store = HeatmapStore.create(None, geometry, t_cells, prep.model_name,
                                        prep.fingerprint)
            runner = run_tiles(prep, slide, rois, store, n_readers=args.readers)
            with _RssSampler() as rss:
                for _ in runner:
                    pass
            st = runner.stats
            tissue_px = sum(r.rows * r.cols * geometry.cell_size0 ** 2 * r.tissue for r in rois)
            rows_out.append({
                "width": width,
                "rois": len(rois),
                "rois_of": len(all_rois),
                "roi_px": roi_px,
                "elapsed_s": st.elapsed,
                "s_per_roi": st.elapsed / max(1, len(rois)),
                "tissue_mpx_per_s": tissue_px / 1e6 / st.elapsed,
                "io_wait_fraction": st.io_wait_fraction,
                "peak_rss_mb": rss.peak / 2**20,
                "rss_rise_mb": (rss.peak - rss.start_rss) / 2**20,
                "roi_buffers_mb": buffers * roi_bytes / 2**20,
                "whole_slide_estimate_s": st.elapsed / max(1, len(rois)) * len(all_rois),
            })
            if width == widths[0]:
                last_map = store.to_numpy()
            del store, runner, prep, net
        post = {}
        if last_map is not None:
            post["slide_map_shape"] = list(last_map.shape)
            post["slide_map_s"] = _time(lambda: extract_regions(last_map, geometry))
        synth = _synthetic_map()
        g5 = MapGeometry.for_slide((80000, 80000), 0.243, 0.243, alpha=2)
        post["synthetic_5000_s"] = _time(lambda: extract_regions(synth, g5))
        post["synthetic_5000_regions"] = len(extract_regions(synth, g5))

    print()
    print(f"{'width':>6} {'ROIs':>9} {'s/ROI':>7} {'tissue Mpx/s':>13} {'I/O wait':>9} "
          f"{'peak RSS':>9} {'RSS rise':>9} {'ROI bufs':>9} {'whole slide':>12}")
    for r in rows_out:
        print(f"{r['width']:>6g} {r['rois']:>4}/{r['rois_of']:<4} {r['s_per_roi']:>7.2f} "
              f"{r['tissue_mpx_per_s']:>13.2f} {100 * r['io_wait_fraction']:>8.1f}% "
              f"{r['peak_rss_mb']:>7.0f}MB {r['rss_rise_mb']:>7.0f}MB "
              f"{r['roi_buffers_mb']:>7.0f}MB {r['whole_slide_estimate_s']:>11.0f}s")
    if any(r["rois"] < r["rois_of"] for r in rows_out):
        print("(ROIs subsampled evenly over the slide where 'ROIs' < total; 'whole slide' "
              "extrapolates s/ROI to all tissue ROIs)")
    print()
    if "slide_map_s" in post:
        print(f"post-processing, this slide's map {post['slide_map_shape']}: "
              f"{1000 * post['slide_map_s']:.1f} ms")
    print(f"post-processing, synthetic 5000x5000 map ({post['synthetic_5000_regions']} regions): "
          f"{1000 * post['synthetic_5000_s']:.0f} ms (best of 3)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows_out, "postprocess": post,
                                         "device": str(dev), "slide_size": list(size),
                                         "tissue_mask": tissue_note}, indent=2))
    return 0
