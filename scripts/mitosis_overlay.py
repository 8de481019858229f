"""Draw a mitosis run's detections over its field, with the truth, as a PNG.

    python scripts/mitosis_overlay.py RUN_DIR FIELD.png TRUTH.csv OUT.png [--crop X Y W H] [--scale 1]

Truth figures: green circles (7.5 µm, the matching radius); imposters: blue circles;
detections: yellow crosses when they match a figure (MIDOG rule, greedy), red when
false positives; missed figures get a red circle. Optionally the probability map as a
magenta tint.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("field")
    p.add_argument("truth")
    p.add_argument("out")
    p.add_argument("--crop", type=int, nargs=4, default=None, metavar=("X", "Y", "W", "H"))
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--tint", action="store_true", help="tint by the stored probability map")
    args = p.parse_args()

    from napari_wsi_detect.evaluation.detection import CaseEval, candidate_pairs, greedy_match

    run = Path(args.run)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    mpp = float(summary["slide"]["mpp"])
    dets = np.array([(m["score"], m["x"], m["y"]) for m in summary["mitoses"]]).reshape(-1, 3)
    figs, imps = [], []
    with open(args.truth, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            (imps if "not" in row.get("label", "") else figs).append(
                (float(row["x"]), float(row["y"])))
    truth = np.asarray(figs).reshape(-1, 2)
    case = CaseEval("field", truth, dets, mpp)
    radius = 7.5 / mpp
    match = greedy_match(candidate_pairs(case.truth, case.detections, radius),
                         np.ones(len(dets), bool))
    matched = set(match[match >= 0].tolist())
    img = Image.open(args.field).convert("RGB")
    if args.tint:
        from napari_wsi_detect.engine.heatmap import HeatmapStore

        store = HeatmapStore.open(run / "heatmap.zarr")
        m = np.nan_to_num(store.to_numpy())
        g = summary["geometry"]
        s = g["model_stride"] // g["alpha"] * g["d"]
        big = np.kron(m, np.ones((int(round(s)), int(round(s)))))[:img.height, :img.width]
        a = np.asarray(img).astype(np.float32)
        t = np.clip(big, 0, 1)[..., None] * 0.55
        a = a * (1 - t) + np.array([255, 0, 255], np.float32) * t
        img = Image.fromarray(a.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for i, (x, y) in enumerate(truth):
        colour = (0, 200, 0) if match[i] >= 0 else (255, 0, 0)
        d.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=2)
    for x, y in imps:
        d.ellipse([x - radius, y - radius, x + radius, y + radius], outline=(0, 90, 255), width=2)
    for j, (_, x, y) in enumerate(dets):
        colour = (255, 230, 0) if j in matched else (255, 0, 0)
        d.line([x - 8, y, x + 8, y], fill=colour, width=3)
        d.line([x, y - 8, x, y + 8], fill=colour, width=3)
    if args.crop:
        x, y, w, h = args.crop
        img = img.crop((x, y, x + w, y + h))
    if args.scale != 1.0:
        img = img.resize((int(img.width * args.scale), int(img.height * args.scale)),
                         Image.Resampling.LANCZOS)
    img.save(args.out)
    print(f"{args.out}: {len(truth)} figures, {len(dets)} detections, "
          f"{len(matched)} matched")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
