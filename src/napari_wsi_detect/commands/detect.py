"""`wsi-detect TASK SLIDE --out DIR` for every registered detector.

One sub-command per task in the registry (metastases today), with the shared flags and
one flag per schema parameter (`--alpha`, `--threshold`, `--opening-um` ...), checked
against the parameter's range when the command line is parsed. Writes DIR/heatmap.zarr,
DIR/<results file> and DIR/summary.json. Ctrl-C cancels cleanly: the partial heatmap
stays in DIR/heatmap.zarr.partial and running the same command again resumes it (exit
code 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import CancelledError
from ._common import add_backend_argument, cancel_on_sigint, positive_int, progress_bar, region_arg


def param_type(param: Any) -> Any:
    def parse(text: str) -> Any:
        from ..detectors.params import ParamError

        try:
            return param.validate(text)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = param.key  # argparse names the type in its messages
    return parse


def add_param_arguments(p: argparse.ArgumentParser, params: Any, model_defaults: bool) -> None:
    for param in params:
        unit = f" {param.unit}" if param.unit else ""
        default = ("default: the model's, else " if model_defaults and param.stage == "post"
                   else "default ")
        p.add_argument(param.flag, dest=param.key, type=param_type(param), default=None,
                       metavar=param.key.upper(),
                       help=f"{param.help} ({param.describe_range()}; {default}"
                            f"{param.format(param.default)}{unit})")


def mpp_arg(text: str) -> float:
    """argparse type of --mpp: a finite number in [0.01, 20] µm/px."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mpp must be a number of µm/px, got {text!r}") from None
    if not 0.01 <= value <= 20:  # NaN fails too
        raise argparse.ArgumentTypeError(f"--mpp must be in [0.01, 20] µm/px, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from ..detectors import available

    for det in available():
        p = sub.add_parser(det.task, help=f"{det.title} on a whole slide",
                           description=f"{det.title}: writes DIR/heatmap.zarr, "
                                       f"DIR/{det.results_file} and DIR/summary.json.")
        p.add_argument("slide", help="slide file (.svs, .ndpi, .mrxs, .tif, ...)")
        p.add_argument("--model", default=det.default_model,
                       help=f"'{det.default_model}' (bundled) or a model file NAME.safetensors"
                            " / NAME.json")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
        add_backend_argument(p)
        p.add_argument("--region", type=region_arg, default=None, metavar="X,Y,W,H",
                       help="analyse only ROIs touching this level-0 rectangle")
        p.add_argument("--roi-cells", type=positive_int, default=None, metavar="T",
                       help="ROI size in map cells (default: the detector's for the device)")
        p.add_argument("--batch-size", type=positive_int, default=None, metavar="B")
        p.add_argument("--mpp", type=mpp_arg, default=None, metavar="UM_PER_PX",
                       help="level-0 µm per pixel, replacing the slide's (needed for a "
                            "PNG/TIFF field without one; else the model's is assumed)")
        p.add_argument("--readers", type=positive_int, default=2,
                       help="slide reader threads (default 2)")
        p.add_argument("--no-tissue-mask", action="store_true",
                       help="analyse background too (when the tissue mask misses faint tissue)")
        add_param_arguments(p, det.all_params(), model_defaults=True)
        p.add_argument("--overwrite", action="store_true",
                       help="discard a heatmap in DIR made with another model or settings")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--out", required=True, metavar="DIR", help="output folder")
        p.set_defaults(func=run, task=det.task)


def run(args: argparse.Namespace) -> int:
    from ..detectors import get_detector
    from ..detectors.job import DetectionRequest, detect

    det = get_detector(args.task)
    request = DetectionRequest(
        task=det.task, slide=args.slide, model=args.model, device=args.device,
        backend=args.backend,
        options={p.key: getattr(args, p.key) for p in det.options},
        params={p.key: getattr(args, p.key) for p in det.params},
        region=args.region, out=args.out, roi_cells=args.roi_cells,
        batch_size=args.batch_size, n_readers=args.readers,
        use_tissue=not args.no_tissue_mask, overwrite=args.overwrite, mpp=args.mpp,
    )
    cancel = threading.Event()
    tiles = threading.Event()  # set when the first ROI starts: Ctrl-C then finishes it
    bar, update = progress_bar(args.quiet, desc=det.task)
    previous = cancel_on_sigint(cancel, bar, graceful=tiles.is_set)
    try:
        try:
            result = detect(request, cancel, progress=update,
                            on_start=lambda started: tiles.set())
        except KeyboardInterrupt:
            # Ctrl-C before the tiles, or a second one: the store is still consistent
            # (chunk first, flag second) and the output set is replaced all or none.
            partial = Path(args.out) / "heatmap.zarr.partial"
            raise CancelledError(
                f"interrupted; the partial heatmap is kept in {partial}: run the same "
                "command again to resume" if partial.is_dir() else
                "interrupted before any ROI was computed; nothing was written") from None
    except CancelledError as exc:
        if bar is not None:
            bar.close()
            bar = None
        print(f"wsi-detect: {exc}", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    t = result.timings
    score = result.slide_score
    values = ", ".join(f"{p.key} {result.parameters[p.key]:g}" for p in det.params)
    print(f"slide score: {score:.4f}" if score == score else "slide score: n/a")
    print(f"{det.result_kind}: {len(result.detections)} ({values})")
    from ..detectors.base import Detector

    if type(det).headline is not Detector.headline:  # the task's own clinical numbers
        print(det.headline(result.detections).replace("   ·   ", "; "))
    repaired = (f" ({t['rois_repaired']} damaged in the store, recomputed)"
                if t.get("rois_repaired") else "")
    print(f"ROIs: {t['rois_computed']} computed{repaired}, {t['rois_resumed']} resumed; "
          f"{t['total_s']:.1f} s total, I/O wait {100 * t['io_wait_fraction']:.0f} %")
    print(f"wrote {args.out}/heatmap.zarr, {det.results_file}, summary.json")
    return 0
