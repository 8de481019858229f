"""npe2 sample data: a synthetic lymph-node slide ("phantom") with known tumours.

Written once into the user cache (~/.cache/napari-wsi-detect, or $NAPARI_WSI_DETECT_CACHE)
and then opened like any slide, so the sample behaves exactly as a dropped file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from napari_wsi_detect._napari.layers import LayerData
from napari_wsi_detect._napari.reader import read_slides

PHANTOM_SEED = 0
PHANTOM_SIZE = (8192, 6144)


def cache_dir() -> Path:
    root = os.environ.get("NAPARI_WSI_DETECT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "napari-wsi-detect"


def phantom_path(seed: int | None = None, size: tuple[int, int] | None = None) -> Path:
    """Path of the cached phantom, writing it first if needed (atomically)."""
    seed = PHANTOM_SEED if seed is None else seed
    size = PHANTOM_SIZE if size is None else tuple(size)
    out = cache_dir() / f"phantom-lymph-node-seed{seed}-{size[0]}x{size[1]}.tif"
    if out.exists():
        return out
    from napari_wsi_detect.phantom import write_phantom

    out.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a second napari, or one killed half-way,
    # never sees a half-written slide. The truth files (same stem) move first.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".phantom-") as tmp:
        tmp_slide = Path(tmp) / out.name
        write_phantom(tmp_slide, seed=seed, size=size)
        for f in sorted(Path(tmp).iterdir(), key=lambda p: p == tmp_slide):
            os.replace(f, out.parent / f.name) if f.is_file() else shutil.move(str(f), out.parent)
    return out


def phantom_lymph_node() -> list[LayerData]:
    """npe2 sample-data command: the phantom slide as a multiscale image layer."""
    return read_slides(phantom_path())
