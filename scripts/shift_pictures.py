"""Side-by-side pictures of stored metastasis runs on one slide: regions in random colours,
the truth outline green, computed tissue light grey, the rest black, at map resolution
(one map cell per pixel, like the shift metrics).

    .venv/bin/python scripts/shift_pictures.py --truth W/blur-jpeg-*/tumor_604.tumour-mask.tif \
        --panel "v2, blur-jpeg:W/runs/demo-…/blur-jpeg-…/tumor_604" \
        --panel "v4, blur-jpeg:W/runs/v4-…/blur-jpeg-…/tumor_604:closing_um=16" \
        --out docs/images/shift-v2-v4.png

Each panel is LABEL:RUN_FOLDER[:key=value,...] (post-processing values on the stored map;
default: the run's own). The crop is the largest true lesion with a margin (--margin cells),
the same window in every panel; the caption under each panel gives its region count there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from napari_wsi_detect._atomic import write_bytes_atomic
from napari_wsi_detect.detectors.run_folder import load_result
from napari_wsi_detect.evaluation.shift import level5_at_cells, region_cells
from napari_wsi_detect.evaluation.truth_masks import load_truth_file


def _values(spec: str) -> dict[str, float]:
    out = {}
    for kv in (spec.split(",") if spec else []):
        key, _, value = kv.partition("=")
        out[key] = float(value)
    return out


def panel(folder: Path, values: dict[str, float], truth_path: Path,
          window: tuple[slice, slice] | None, margin: int
          ) -> tuple[np.ndarray, int, tuple[slice, slice]]:
    """(RGB crop, regions touching the crop, the crop window)."""
    res = load_result(folder, need_summary=True)
    regions = res.postprocess(**values)
    g = res.geometry
    shape, cell0 = tuple(g.shape), float(g.cell_size0)
    truth = load_truth_file(truth_path)
    tumour = level5_at_cells(truth.tumour, truth.tumour_offset, shape, cell0) > 0
    if window is None:
        lab, n = ndi.label(tumour)
        if n == 0:
            raise SystemExit(f"{truth_path}: no tumour to centre the crop on")
        big = 1 + int(np.argmax(ndi.sum(tumour, lab, range(1, n + 1))))
        sl = ndi.find_objects((lab == big).astype(np.int32))[0]
        window = (slice(max(sl[0].start - margin, 0), min(sl[0].stop + margin, shape[0])),
                  slice(max(sl[1].start - margin, 0), min(sl[1].stop + margin, shape[1])))
    cells = region_cells(regions, shape, cell0)[window]
    rgb = np.zeros(cells.shape + (3,), np.uint8)
    tissue = np.isfinite(np.asarray(res.heatmap, np.float32))[window]
    rgb[tissue] = (236, 232, 236)
    colours = np.random.default_rng(0).integers(40, 230, (int(cells.max()) + 1, 3))
    rgb[cells > 0] = colours[cells[cells > 0]]
    t = tumour[window]
    rgb[t & ~ndi.binary_erosion(t, iterations=2)] = (0, 160, 60)
    return rgb, len(np.unique(cells[cells > 0])), window


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", action="append", required=True,
                    help="LABEL:RUN_FOLDER[:key=value,...]")
    ap.add_argument("--truth", required=True, help="the slide's .tumour-mask.tif")
    ap.add_argument("--margin", type=int, default=40, help="map cells around the lesion")
    ap.add_argument("--scale", type=int, default=1, help="pixels per map cell")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    images, window = [], None
    for spec in args.panel:
        label, folder, *rest = spec.split(":", 2)
        rgb, n, window = panel(Path(folder), _values(rest[0] if rest else ""),
                               Path(args.truth), window, args.margin)
        im = Image.fromarray(rgb).resize((rgb.shape[1] * args.scale, rgb.shape[0] * args.scale),
                                         Image.NEAREST)
        images.append((im, f"{label}: {n} region{'s' if n != 1 else ''}"))
    w = sum(im.width for im, _ in images) + 12 * (len(images) - 1)
    h = max(im.height for im, _ in images)
    font = ImageFont.load_default(size=max(14, h // 28))
    canvas = Image.new("RGB", (w, h + font.size * 2), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for im, caption in images:
        canvas.paste(im, (x, 0))
        draw.text((x + 4, h + font.size // 2), caption, fill="black", font=font)
        x += im.width + 12
    from io import BytesIO

    buf = BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    write_bytes_atomic(Path(args.out), buf.getvalue())
    print(args.out, canvas.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
