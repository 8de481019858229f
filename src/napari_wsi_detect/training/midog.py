"""MIDOG 2021 mitosis crops as training inputs and validation fields (numpy / PIL only).

The crops (../shared/data/mitosis-midog21: 128² px, one mitotic figure at pixel (64, 64),
`labels.csv` naming the source image and the figure's source coordinates) are placed back
in their source images' frame, so the MIDOG++ COCO labels (50×50 boxes on every mitotic
figure and every imposter of each source image) give every other figure and imposter
inside each crop.

A training input never has its figures at fixed places: it is a "guillotine" mosaic,
rows and columns of random heights and widths (48–128 px), each cell a random window of a
randomly chosen, randomly rotated (90°) and flipped crop, so figures land anywhere in the
input and at any distance from the seams; then one H&E stain + colour jitter for the whole
input. Labels are concentric (training/concentric.py), drawn per crop before the
rotation/window, so they follow the pixels exactly.

The split is by source image (slide), stratified by scanner (MIDOG 2021: 001–050
Hamamatsu XR, 051–100 Hamamatsu S360, 101–150 Aperio CS2), never by crop.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import WsiDetectError
from .augment import RUIFROK_HED, colour_jitter
from .concentric import concentric_label, draw_radii

# Optical density of each uint8 value and the Ruifrok-Johnston basis, in float32: the
# same stain jitter as augment.stain_jitter at 1/15 of its cost (it bounds the producer).
_OD = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)
_HED = RUIFROK_HED.astype(np.float32)
_HED_INV = np.linalg.pinv(RUIFROK_HED).astype(np.float32)

CROP = 128
CENTRE = 64  # pixel index of each crop's figure
MIDOG_MPP = 0.25  # ~0.23-0.25 µm/px over the three scanners


@dataclass(frozen=True)
class Crop:
    path: str
    slide: str  # source image, e.g. "002.tiff"
    uid: str
    figures: np.ndarray = field(compare=False)  # (k, 2) x, y pixel indices in the crop
    imposters: np.ndarray = field(compare=False)  # (m, 2)

    @property
    def scanner(self) -> str:
        n = int(Path(self.slide).stem)
        return "XR" if n <= 50 else "S360" if n <= 100 else "CS2"


def load_crops(folder: str | Path, coco_json: str | Path | None) -> list[Crop]:
    """Every crop of `folder` with the figures and imposters inside it (only its own
    figure when `coco_json` is None)."""
    folder = Path(folder)
    table = folder / "labels.csv"
    if not table.is_file():
        raise WsiDetectError(f"{folder} has no labels.csv: not a MIDOG crop folder "
                             "(expected patches/{normal,atypical}/MIDOG21_<uid>.png + labels.csv)")
    paths = {p.stem.split("_")[-1]: p for p in folder.glob("patches/*/*.png")}
    boxes: dict[str, np.ndarray] = {}
    if coco_json is not None:
        try:
            coco = json.loads(Path(coco_json).read_text(encoding="utf-8"))
            names = {im["id"]: im["file_name"] for im in coco["images"]}
            rows: dict[str, list] = defaultdict(list)
            for a in coco["annotations"]:
                x0, y0, x1, y1 = a["bbox"]  # MIDOG++ writes [x0, y0, x1, y1]
                rows[names[a["image_id"]]].append(((x0 + x1) / 2, (y0 + y1) / 2,
                                                   a["category_id"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WsiDetectError(f"cannot read the COCO labels {coco_json}: {exc}") from None
        boxes = {k: np.asarray(v, np.float64) for k, v in rows.items()}
    crops = []
    with table.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            uid = row["uid"]
            if uid not in paths:
                raise WsiDetectError(f"{table} names crop {uid} but {folder}/patches has no "
                                     f"MIDOG21_{uid}.png")
            cx, cy = float(row["x"]), float(row["y"])
            figs, imps = [(CENTRE, CENTRE)], []
            pts = boxes.get(row["slide"])
            if pts is not None and len(pts):
                dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
                inside = (np.abs(dx) < CENTRE) & (np.abs(dy) < CENTRE)
                own = np.hypot(dx, dy) < 3
                for k in np.nonzero(inside & ~own)[0]:
                    p = (CENTRE + dx[k], CENTRE + dy[k])
                    (figs if pts[k, 2] == 1 else imps).append(p)
            crops.append(Crop(str(paths[uid]), row["slide"], uid,
                              np.asarray(figs, np.float64), np.asarray(imps, np.float64)
                              .reshape(-1, 2)))
    return crops


def split_by_slide(crops: list[Crop], val_fraction: float, seed: int
                   ) -> tuple[list[Crop], list[Crop], list[str]]:
    """(train, val, val slide names): `val_fraction` of each scanner's source images."""
    by_scanner: dict[str, list[str]] = defaultdict(list)
    for s in sorted({c.slide for c in crops}):
        by_scanner[Crop("", s, "", np.zeros((0, 2)), np.zeros((0, 2))).scanner].append(s)
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for scanner in sorted(by_scanner):
        slides = by_scanner[scanner]
        k = int(round(val_fraction * len(slides)))
        val.update(rng.permutation(slides)[:k].tolist())
    return ([c for c in crops if c.slide not in val], [c for c in crops if c.slide in val],
            sorted(val))


def read_crop(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    if a.shape[:2] != (CROP, CROP):  # rare crops at an image edge: pad white
        out = np.full((CROP, CROP, 3), 255, np.uint8)
        out[: a.shape[0], : a.shape[1]] = a[:CROP, :CROP]
        a = out
    return a


def _cuts(rng: np.random.Generator, total: int, lo: int, hi: int) -> list[int]:
    """Cell sizes in [lo, hi] summing to `total` (the last may be shorter than lo)."""
    sizes, left = [], total
    while left > 0:
        s = int(rng.integers(lo, hi + 1))
        sizes.append(min(s, left))
        left -= s
    return sizes


@dataclass
class MosaicSource:
    """prefetch.BatchSource of (images (B, S, S, 3) uint8, labels (B, S, S) uint8);
    batch k is a pure function of (seed, k)."""

    crops: list[Crop]
    batch_size: int
    size: int
    seed: int
    label_mode: str = "mixed"
    min_cell: int = 48
    stain_sigma: float = 0.1
    stain_bias: float = 0.05
    colour: float = 0.1
    hue: float = 0.03
    mpp: float = MIDOG_MPP

    def __post_init__(self) -> None:
        self._images: list[np.ndarray] | None = None

    def open(self) -> None:
        self._images = [read_crop(c.path) for c in self.crops]

    def close(self) -> None:
        self._images = None

    def make_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None:
            self.open()
        rng = np.random.default_rng([self.seed, int(step)])
        imgs = np.empty((self.batch_size, self.size, self.size, 3), np.uint8)
        labs = np.empty((self.batch_size, self.size, self.size), np.uint8)
        for b in range(self.batch_size):
            imgs[b], labs[b] = self._mosaic(rng)
        return imgs, labs

    def _mosaic(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        assert self._images is not None
        s = self.size
        img = np.empty((s, s, 3), np.uint8)
        lab = np.empty((s, s), np.uint8)
        y = 0
        for h in _cuts(rng, s, self.min_cell, CROP):
            x = 0
            for w in _cuts(rng, s, self.min_cell, CROP):
                k = int(rng.integers(len(self.crops)))
                c = self.crops[k]
                r, big = draw_radii(rng, len(c.figures), self.label_mode, self.mpp)
                lc = concentric_label((CROP, CROP), c.figures, r, big, c.imposters)
                ic = self._images[k]
                k90, fh, fv = int(rng.integers(4)), rng.random() < 0.5, rng.random() < 0.5
                ic, lc = np.rot90(ic, k90), np.rot90(lc, k90)
                if fh:
                    ic, lc = ic[:, ::-1], lc[:, ::-1]
                if fv:
                    ic, lc = ic[::-1], lc[::-1]
                oy, ox = int(rng.integers(CROP - h + 1)), int(rng.integers(CROP - w + 1))
                img[y:y + h, x:x + w] = ic[oy:oy + h, ox:ox + w]
                lab[y:y + h, x:x + w] = lc[oy:oy + h, ox:ox + w]
                x += w
            y += h
        alpha = 1.0 + rng.uniform(-1, 1, 2) * self.stain_sigma
        bias = rng.uniform(-1, 1, 2) * self.stain_bias
        b, c_, sat = 1.0 + rng.uniform(-1, 1, 3) * self.colour
        hue = float(rng.uniform(-1, 1)) * self.hue
        conc = _OD[img] @ _HED_INV
        conc[..., :2] = conc[..., :2] * alpha.astype(np.float32) + bias.astype(np.float32)
        x = 256.0 * np.exp(-(conc @ _HED)) - 1.0
        x = colour_jitter(x, float(b), float(c_), float(sat), hue)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), lab


@dataclass(frozen=True)
class Field:
    """A validation field: a mosaic of whole-crop windows (no rotation, no colour change)
    and the level-0 (x, y) of every mitotic figure in it (pixel centres, +0.5)."""

    image: np.ndarray
    figures: np.ndarray  # (n, 2)
    imposters: np.ndarray  # (m, 2)
    slides: tuple[str, ...]


def make_fields(crops: list[Crop], n: int, size: int, seed: int, min_cell: int = 64
                ) -> list[Field]:
    """`n` fields of size² px from `crops` (each crop used about once per pass), cells of
    random sizes so the figures are not at fixed places."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(crops)))
    fields = []
    cache: dict[int, np.ndarray] = {}
    for _ in range(n):
        img = np.full((size, size, 3), 255, np.uint8)
        figs, imps, slides = [], [], []
        y = 0
        for h in _cuts(rng, size, min_cell, CROP):
            x = 0
            for w in _cuts(rng, size, min_cell, CROP):
                if not order:
                    order = list(rng.permutation(len(crops)))
                k = int(order.pop())
                c = crops[k]
                if k not in cache:
                    cache[k] = read_crop(c.path)
                oy, ox = int(rng.integers(CROP - h + 1)), int(rng.integers(CROP - w + 1))
                img[y:y + h, x:x + w] = cache[k][oy:oy + h, ox:ox + w]
                for pts, dest in ((c.figures, figs), (c.imposters, imps)):
                    for px, py in pts:
                        if ox <= px < ox + w and oy <= py < oy + h:
                            dest.append((x + px - ox + 0.5, y + py - oy + 0.5))
                slides.append(c.slide)
                x += w
            y += h
        fields.append(Field(img, np.asarray(figs, np.float64).reshape(-1, 2),
                            np.asarray(imps, np.float64).reshape(-1, 2),
                            tuple(sorted(set(slides)))))
    return fields


__all__ = ["Crop", "Field", "MosaicSource", "load_crops", "make_fields", "read_crop",
           "split_by_slide"]
