"""`wsi-detect rescan IN.tif OUT.tif`: a slide as if another scanner and stain batch made it."""

from __future__ import annotations

import argparse
import json
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rescan",
        help="re-render a slide with a stain/scanner shift (HED gains, blur, gamma, JPEG, µm/px)",
        description=(
            "Stream IN tile by tile into a new pyramidal JPEG TIFF OUT as if scanned "
            "elsewhere: haematoxylin/eosin strength in optical-density space, stain "
            "vectors turned, defocus blur, gamma, brightness, JPEG quality, pixel size. "
            "The truth files beside IN (IN.geojson phantom truth, IN.tumour-mask.tif) are "
            "carried beside OUT, rescaled with the pixel size. Files appear only when "
            "complete. Named shift conditions: docs/metastasis-model.md."
        ),
    )
    p.add_argument("src", metavar="IN", help="slide to read (any format the package opens)")
    p.add_argument("out", metavar="OUT.tif", help="slide to write (.tif or .tiff)")
    p.add_argument("--h-gain", type=float, default=1.0, help="haematoxylin ×, default 1")
    p.add_argument("--e-gain", type=float, default=1.0, help="eosin ×, default 1")
    p.add_argument("--stain-rotation", type=float, default=0.0, metavar="DEG",
                   help="turn both stain vectors in their plane (degrees), default 0")
    p.add_argument("--blur", type=float, default=0.0, metavar="SIGMA",
                   help="defocus: Gaussian σ in output pixels, default 0")
    p.add_argument("--gamma", type=float, default=1.0, help="255·(I/255)^gamma, default 1")
    p.add_argument("--brightness", type=float, default=1.0, help="intensity ×, default 1")
    p.add_argument("--jpeg-quality", type=int, default=90, help="of the tiles, default 90")
    p.add_argument("--mpp", type=float, default=None,
                   help="output µm per pixel (default: the input's)")
    p.add_argument("--src-mpp", type=float, default=None,
                   help="input µm per pixel when the file records none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..phantom.rescan import Rescan, rescan_slide

    params = Rescan(h_gain=args.h_gain, e_gain=args.e_gain,
                    stain_rotation_deg=args.stain_rotation, blur_sigma_px=args.blur,
                    gamma=args.gamma, brightness=args.brightness,
                    jpeg_quality=args.jpeg_quality, mpp=args.mpp)
    from ._common import tile_progress

    bar, progress = tile_progress(args.quiet, "rescan")

    t0 = time.perf_counter()
    try:
        info = rescan_slide(args.src, args.out, params, src_mpp=args.src_mpp,
                            progress=progress)
    finally:
        if bar is not None:
            bar.close()
    w, h = info["size"]
    print(f"slide: {info['slide']} ({w}×{h} px at {info['mpp']:g} µm/px, "
          f"{time.perf_counter() - t0:.1f} s)")
    for f in info["truth"]:
        print(f"truth: {f}")
    print("rescan: " + json.dumps(info["params"]))
    return 0
