"""`wsi-detect metastases SLIDE --out DIR`: Fast ScanNet whole-slide metastasis detection.

Writes DIR/heatmap.zarr, DIR/regions.geojson (QuPath) and DIR/summary.json. A progress
bar with ETA goes to stderr. Ctrl-C cancels cleanly: the partial heatmap stays in
DIR/heatmap.zarr.partial and running the same command again resumes it (exit code 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..errors import CancelledError


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(float(v)) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"region must be x,y,w,h in level-0 pixels (e.g. 10000,20000,4096,4096), got {text!r}"
        )
    return parts  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metastases", help="Fast ScanNet metastasis detection on a whole slide")
    p.add_argument("slide", help="slide file (.svs, .ndpi, .mrxs, .tif, ...)")
    p.add_argument("--model", default="demo",
                   help="'demo' (bundled) or a model file NAME.safetensors / NAME.json")
    p.add_argument("--alpha", type=int, default=2, choices=(1, 2, 4, 8),
                   help="dense coefficient: map stride 32/alpha model px (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--region", type=_region, default=None, metavar="X,Y,W,H",
                   help="analyse only ROIs touching this level-0 rectangle")
    p.add_argument("--roi-cells", type=int, default=None, metavar="T",
                   help="ROI size in map cells (default: 166 at alpha 2 on GPU, 52 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B")
    p.add_argument("--readers", type=int, default=2, help="slide reader threads (default 2)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold (default: the model's, usually 0.5)")
    p.add_argument("--opening-um", type=float, default=None,
                   help="opening disk radius in µm (0 = none; default: the model's)")
    p.add_argument("--min-area-um2", type=float, default=None,
                   help="drop regions smaller than this (µm²)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a heatmap in DIR made with another model or settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def _progress_bar(quiet: bool) -> tuple[Any, Any]:
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="ROI", file=sys.stderr, dynamic_ncols=True,
               desc="metastases", smoothing=0.1)

    def update(done: int, total: int, eta: float | None) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _cancel_on_sigint(cancel: threading.Event) -> Any:
    """First Ctrl-C: stop after the ROI in flight (clean, resumable). Second: interrupt
    at once. Returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\nwsi-detect: stopping after the current ROI (Ctrl-C again to abort)...",
              file=sys.stderr)

    return signal.signal(signal.SIGINT, handler)


def run(args: argparse.Namespace) -> int:
    from ..api import detect_metastases

    cancel = threading.Event()
    bar, update = _progress_bar(args.quiet)
    previous = _cancel_on_sigint(cancel)
    try:
        try:
            result = detect_metastases(
                args.slide, model=args.model, alpha=args.alpha, device=args.device,
                region=args.region, out=args.out, batch_size=args.batch_size,
                roi_cells=args.roi_cells, progress=update, cancel=cancel,
                threshold=args.threshold, opening_um=args.opening_um,
                min_area_um2=args.min_area_um2, n_readers=args.readers,
                overwrite=args.overwrite,
            )
        except KeyboardInterrupt:
            # Ctrl-C landed outside the runner's loop (e.g. while writing a tile): the
            # store is still consistent (chunk first, flag second), so it is resumable.
            raise CancelledError(
                f"interrupted; the partial heatmap is kept in {args.out}/heatmap.zarr.partial:"
                " run the same command again to resume"
            ) from None
    except CancelledError as exc:
        print(f"wsi-detect: {exc}", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    t = result.timings
    score = result.slide_score
    print(f"slide score: {score:.4f}" if score == score else "slide score: n/a")
    print(f"regions: {len(result.regions)} (threshold {result.parameters['threshold']:g}, "
          f"opening {result.parameters['opening_um']:g} µm)")
    print(f"ROIs: {t['rois_computed']} computed, {t['rois_resumed']} resumed; "
          f"{t['total_s']:.1f} s total, I/O wait {100 * t['io_wait_fraction']:.0f} %")
    print(f"wrote {args.out}/heatmap.zarr, regions.geojson, summary.json")
    return 0
