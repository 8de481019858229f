"""`wsi-detect bench mitoses`: SegMitos seconds per 2048² field and per mm², memory.

Through the job's lower steps (`prepare_run` + `run_tiles`, then the detector's
`postprocess`: exactly what `wsi-detect mitoses` runs), in one run:

* a 2048² field at 0.25 µm/px (0.26 mm²; a mosaic of MIDOG crops when
  ../shared/data is there, else a phantom window): network seconds, post-processing
  seconds, seconds per mm² (the paper: 2.9 s per 2084² field on a TITAN X);
* phantom slides of the given sizes with the tissue mask: seconds per mm² of tissue
  (level-0 tissue area of the computed ROIs) and the peak RSS rise during the run
  (psutil, every 10 ms), which stays flat as the slide grows because the runner streams
  ROIs into the store.

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import bench_model

SHARED_CROPS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mitosis-midog21"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 3072, 8192, 6144],
                        metavar="W H", help="phantom sizes as W H pairs (default 4096 3072 "
                                            "8192 6144)")
    parser.add_argument("--model", default="mitoses",
                        help="model (default: the bundled 'mitoses'); 'random' = random "
                             "weights at the default width")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "napari-wsi-detect" / "bench",
                        help="where phantom slides are kept between runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")


def _model(name: str, device: Any) -> tuple[Any, dict]:
    from ..models.segmitos import SegMitosFCN

    return bench_model(name, device, SegMitosFCN, "mitoses", 0.25)


def _field(cache: Path) -> Path:
    """A 2048² PNG field (MIDOG crops tiled 16 × 16, else a phantom window)."""
    from PIL import Image

    path = cache / "mitosis-field-2048.png"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    crops = sorted(SHARED_CROPS.glob("patches/*/*.png"))[:256]
    if len(crops) == 256:
        img = np.zeros((2048, 2048, 3), np.uint8)
        for k, p in enumerate(crops):
            r, c = divmod(k, 16)
            with Image.open(p) as im:
                img[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128] = np.asarray(
                    im.convert("RGB"))[:128, :128]
    else:
        from ..phantom import render_phantom_region  # no MIDOG data: a phantom window

        img = render_phantom_region(1024, 512, 2048, 2048, seed=0, size=(4096, 3072))
    Image.fromarray(img).save(path)
    return path


def measure(path: Path, net: Any, config: dict, device: Any, readers: int,
            mpp: float | None = None, use_tissue: bool = True) -> dict:
    import torch

    from ..detectors import get_detector
    from ..detectors.job import prepare_run, run_tiles
    from ..engine.heatmap import HeatmapStore
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask
    from .wholeslide import _RssSampler

    det = get_detector("mitoses")
    net = net.to(device).eval().to(memory_format=torch.channels_last)
    with open_slide(path) as slide:
        if mpp is not None:
            slide.mpp = mpp
        tissue = compute_tissue_mask(slide) if use_tissue else None
        prep = prepare_run(det, slide, net, config, options={}, device=device, tissue=tissue)
        store = HeatmapStore.create(None, prep.geometry, prep.roi_cells, "bench")
        with _RssSampler() as rss:
            t0 = time.perf_counter()
            runner = run_tiles(prep, slide, store=store, n_readers=readers)
            for _ in runner:
                pass
            t_net = time.perf_counter() - t0
        heatmap = store.to_numpy()
        t0 = time.perf_counter()
        found = det.postprocess(heatmap, prep.geometry, det.defaults(config))
        t_post = time.perf_counter() - t0
        w0, h0 = slide.dimensions
        smpp = slide.mpp or 0.25
    cell_area = prep.geometry.cell_size0 ** 2
    tissue_mm2 = sum(r.rows * r.cols * cell_area * r.tissue for r in prep.rois) \
        * (smpp / 1000) ** 2
    slide_mm2 = w0 * h0 * (smpp / 1000.0) ** 2
    return {
        "slide": str(path), "size": [int(w0), int(h0)], "mpp": smpp,
        "slide_mm2": round(slide_mm2, 3), "tissue_mm2": round(tissue_mm2, 3),
        "rois": len(prep.rois), "network_s": round(t_net, 3),
        "postprocess_s": round(t_post, 4),
        "s_per_mm2_tissue": round(t_net / max(tissue_mm2, 1e-9), 2),
        "io_wait_fraction": round(runner.stats.io_wait_fraction, 3),
        "rss_rise_mb": round((rss.peak - rss.start_rss) / 2**20, 1),
        "map_mb": round(heatmap.nbytes / 2**20, 2),
        "mitoses": len(found),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.device import resolve_device
    from .wholeslide import _phantom

    device = resolve_device(args.device)
    net, config = _model(args.model, device)
    if len(args.sizes) % 2:
        raise SystemExit("--sizes takes W H pairs")
    field = measure(_field(args.cache), net, config, device, args.readers, mpp=0.25,
                    use_tissue=False)
    pairs = list(zip(args.sizes[0::2], args.sizes[1::2], strict=True))
    rows = [measure(_phantom(args.cache, (w, h)), net, config, device, args.readers)
            for w, h in pairs]
    print(f"threads {torch.get_num_threads()}, device {device}, model {args.model} "
          f"(width {config.get('width')})")
    print(f"2048² field at 0.25 µm/px ({field['slide_mm2']} mm²): network "
          f"{field['network_s']} s, post-processing {field['postprocess_s']} s, "
          f"{field['s_per_mm2_tissue']} s/mm²")
    print("slide | slide mm² | tissue mm² | ROIs | network s | s/mm² tissue | post s | "
          "map MB | RSS rise MB")
    for r in rows:
        print(" | ".join(str(v) for v in (
            f"{r['size'][0]}x{r['size'][1]}", r["slide_mm2"], r["tissue_mm2"], r["rois"],
            r["network_s"], r["s_per_mm2_tissue"], r["postprocess_s"], r["map_mb"],
            r["rss_rise_mb"])))
    if args.json:
        args.json.write_text(json.dumps({"field": field, "slides": rows}, indent=1))
    return 0
