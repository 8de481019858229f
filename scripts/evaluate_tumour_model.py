"""Dice of the tumour model on the test phantoms: stage 1 alone vs stage 1 + refinement.

    python scripts/evaluate_tumour_model.py DATA_DIR/test OUT_DIR [--model tumour]

Each test slide is segmented once (`segment_tumour`, run folder OUT/refined/<id>); the
same result re-post-processed with refine = 0 (no network runs) is written to
OUT/stage1/<id>. Both sets are scored with `wsi-detect evaluate dice` against the
phantoms' level-5 tumour masks (OUT/dice-{refined,stage1}.json and .png).
OUT/panels.png shows, per slide: the low-resolution image, the stage-1 heatmap, the
refined probability and the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("test", type=Path, help="folder of test slides (searched recursively)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="tumour")
    args = ap.parse_args()

    from napari_wsi_detect import segment_tumour

    slides = sorted(p for p in args.test.rglob("*.tif") if "mask" not in p.name)
    truths = [p.with_name(p.stem + ".tumour-mask.tif") for p in slides]
    times, panels = {}, []
    for slide in slides:
        t = time.perf_counter()
        res = segment_tumour(slide, model=args.model, device="cpu",
                             out=args.out / "refined" / slide.stem, overwrite=True)
        times[slide.stem] = round(time.perf_counter() - t, 1)
        panels.append(_panel(slide, res))
        res.postprocess(refine=0)
        res.write(args.out / "stage1" / slide.stem)
        print(f"{slide.stem}: {times[slide.stem]} s", flush=True)
    cli = Path(sys.executable).with_name("wsi-detect")
    figures = {}
    for kind in ("stage1", "refined"):
        js = args.out / f"dice-{kind}.json"
        cmd = [str(cli), "evaluate", "dice", "--truth", *map(str, truths), "--masks",
               str(args.out / kind), "--json", str(js), "--plot",
               str(args.out / f"dice-{kind}.png")]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        figures[kind] = json.loads(js.read_text())
    (args.out / "seconds.json").write_text(json.dumps(times, indent=1))
    _figure(panels, args.out / "panels.png")
    return 0


def _panel(slide: Path, res) -> tuple:
    import numpy as np
    import tifffile

    from napari_wsi_detect.detectors.tumour_refine import low_resolution_image
    from napari_wsi_detect.slide import open_slide

    with open_slide(slide) as s:
        image, _ = low_resolution_image(s, res.geometry, 512)
    truth = tifffile.imread(slide.with_name(slide.stem + ".tumour-mask.tif")) > 0
    refined = res.maps["refined"].values if "refined" in res.maps else None
    return slide.stem, image, np.nan_to_num(res.heatmap), refined, truth


def _figure(panels: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 4, figsize=(12, 2.6 * len(panels)), squeeze=False)
    for row, (name, image, heat, refined, truth) in zip(axes, panels, strict=True):
        for ax, img, title in zip(row, (image, heat, refined, truth), (
                name, "stage 1 (patch heatmap)", "stage 2 (refined)", "truth (level 5)"),
                strict=True):
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
            if img is not None:
                ax.imshow(img, vmin=0, vmax=1, cmap=None if img.ndim == 3 else "magma",
                          interpolation="nearest")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
