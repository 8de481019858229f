"""`wsi-detect phantom OUT.tif`: write a synthetic lymph-node slide with ground truth."""

from __future__ import annotations

import argparse
import json
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write a synthetic H&E lymph-node slide + GeoJSON truth + level-5 tumour mask",
        description=(
            "Write a phantom whole-slide image (tiled pyramidal JPEG TIFF) with known "
            "metastases (macro/micro/ITC), mitotic figures and imposters. Beside OUT.tif "
            "land OUT.geojson (QuPath truth) and OUT.tumour-mask.tif (level 5, downsample "
            "32). With --primary N, N large primary-tumour regions (holes = stroma "
            "islands, inner rings in the GeoJSON) replace the metastases. Files appear only "
            "when complete."
        ),
    )
    p.add_argument("out", metavar="OUT.tif", help="slide to write (.tif or .tiff)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same slide)")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="level-0 width and height in pixels (default 20000 15000)")
    p.add_argument("--mpp", type=float, default=0.243, help="µm per pixel (default 0.243)")
    p.add_argument("--normal", action="store_true", help="a node without metastases or mitoses")
    p.add_argument("--lesions", type=int, nargs=3, metavar=("MACRO", "MICRO", "ITC"), default=None,
                   help="number of metastases per size class (default: scaled with tissue area; "
                        "none with --primary)")
    p.add_argument("--primary", type=_primary_count, default=0, metavar="N",
                   help="add N (1-8) large primary-tumour regions: lobulated, ragged invasive "
                        "borders, stroma holes (tumour segmentation truth; default 0)")
    p.add_argument("--imposter-density", type=float, default=60.0, metavar="PER_MM2",
                   help="look-alike figures per mm² of tissue (hard negatives; default 60)")
    p.add_argument("--lesion-contrast", type=float, default=1.0, metavar="K",
                   help="< 1: tumour stain and nuclei part way towards the host tissue's "
                        "(fainter lesions; default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _primary_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--primary takes a whole number 0-8, got {text!r}") from None
    if not 0 <= n <= 8:
        raise argparse.ArgumentTypeError(f"--primary takes a whole number 0-8, got {n}")
    return n


def run(args: argparse.Namespace) -> int:
    from ..phantom import DEFAULT_SIZE, write_phantom

    size = tuple(args.size) if args.size else DEFAULT_SIZE
    lesions = None
    if args.lesions is not None:
        lesions = dict(zip(("macro", "micro", "itc"), args.lesions, strict=True))
    from ._common import tile_progress

    bar, progress = tile_progress(args.quiet, "phantom")

    t0 = time.perf_counter()
    try:
        truth = write_phantom(
            args.out, seed=args.seed, size=size, mpp=args.mpp, tumour=not args.normal,
            lesions=lesions, primary=args.primary, progress=progress,
            imposter_density=args.imposter_density, lesion_contrast=args.lesion_contrast,
        )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    w, h = truth.size
    print(f"slide: {truth.slide_path} ({w}×{h} px at {truth.mpp} µm/px, {seconds:.1f} s, "
          f"{w * h / 1e6 / seconds:.1f} MP/s)")
    print(f"truth: {truth.geojson_path}")
    print(f"mask:  {truth.mask_path} (downsample {truth.mask_downsample})")
    print("counts: " + json.dumps(truth.counts()))
    for note in truth.notes:
        print(f"note: {note}")
    return 0
