"""Write validation fields for the mitosis model: mosaics of MIDOG 2021 crops from
held-out source images, as PNG fields + CSV truth (x,y,label; level-0 px).

    python scripts/make_mitosis_fields.py OUT_DIR [--model src/napari_wsi_detect/models/bundled/mitoses.json]
        [--data ../shared/data/mitosis-midog21] [--coco ../shared/data/annotations/midogpp/MIDOG++.json]
        [--n 6] [--size 640] [--seed 3]

The held-out images are the ones the model's JSON records (training.val_slides), so the
fields never contain a crop the model was trained on. Each field is a mosaic of random
windows (64-128 px) of held-out crops, each crop used once before any is reused, so the
figures are not at fixed places. Truth rows: every mitotic figure whose centre lies in
a window ("mitotic figure") and every imposter ("not mitotic figure", not counted).
Then:

    for f in OUT_DIR/field*.png; do wsi-detect mitoses $f --mpp 0.25 --out OUT_DIR/runs/$(basename $f .png); done
    wsi-detect evaluate f1 --detections OUT_DIR/runs --truth OUT_DIR --plot OUT_DIR/f1.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image

from napari_wsi_detect.training.midog import load_crops, make_fields

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "src" /
                                          "napari_wsi_detect" / "models" / "bundled" /
                                          "mitoses.json"))
    p.add_argument("--data", default=str(SHARED / "mitosis-midog21"))
    p.add_argument("--coco", default=str(SHARED / "annotations" / "midogpp" / "MIDOG++.json"))
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    config = json.loads(Path(args.model).read_text(encoding="utf-8"))
    held_out = set(config["training"]["val_slides"])
    crops = [c for c in load_crops(args.data, args.coco) if c.slide in held_out]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = make_fields(crops, args.n, args.size, args.seed)
    for i, f in enumerate(fields):
        name = f"field{i:02d}"
        Image.fromarray(f.image).save(out / f"{name}.png")
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["x", "y", "label"])
            w.writerows([(round(x, 2), round(y, 2), "mitotic figure") for x, y in f.figures])
            w.writerows([(round(x, 2), round(y, 2), "not mitotic figure")
                         for x, y in f.imposters])
        print(f"{name}: {len(f.figures)} figures, {len(f.imposters)} imposters, "
              f"source images {', '.join(f.slides)}")
    print(f"{len(crops)} held-out crops from {len(held_out)} source images: "
          f"{', '.join(sorted(held_out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
