"""Named scanner/stain shift conditions and the phantom test sets built from them.

A condition is a generator setting (the phantom's own knobs: lesion counts per size
class, imposter density, lesion contrast) plus an optional post-hoc `Rescan` of the written slides
(phantom/rescan.py). `build_condition(work, condition, seeds, normal_seeds, size)`
writes the base phantoms once per generator setting and each condition's rescans once,
in folders named after the condition and a hash of its parameters (a changed definition
never reuses a stale slide), each slide with its truth files beside it.

`CONDITIONS` is the shipped table (docs/metastasis-model.md, "Scanner and stain
shift"); `parse_condition("NAME:key=value,...")` defines another one from the command
line with the same code, e.g. for a validation set at other levels:
`pale-val:h_gain=0.8,e_gain=0.8,gamma=0.85` or `few:lesions=0/3/4,imposter_density=150`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import WsiDetectError
from .rescan import Rescan, rescan_slide
from .writer import write_phantom

__all__ = ["CONDITIONS", "Condition", "build_condition", "parse_condition"]

DEFAULT_LESIONS = (1, 2, 2)  # macro, micro, ITC per tumour slide (what fits is kept)


@dataclass(frozen=True)
class Condition:
    name: str
    description: str = ""
    rescan: Rescan | None = None  # None: the phantoms as written
    lesions: tuple[int, int, int] = DEFAULT_LESIONS
    imposter_density: float = 60.0  # the generator's default
    lesion_contrast: float = 1.0  # < 1: fainter lesions (write_phantom)

    def generator(self) -> dict:
        gen = {"lesions": list(self.lesions), "imposter_density": self.imposter_density}
        if self.lesion_contrast != 1.0:  # only then: the folders of the others keep their hash
            gen["lesion_contrast"] = self.lesion_contrast
        return gen

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description,
                "rescan": None if self.rescan is None else self.rescan.to_dict(),
                "generator": self.generator()}


def _c(name: str, description: str, **rescan) -> Condition:
    return Condition(name, description, Rescan(**rescan))


# Levels: "mild" is the shift of issue 15 (H ×1.25, E ×0.75, 1 px blur, gamma 0.9,
# JPEG 70), next to real multi-centre Camelyon variation; the others push one axis each
# beyond it. The training look: the generator's per-seed stain jitter only.
CONDITIONS: dict[str, Condition] = {c.name: c for c in [
    Condition("none", "the phantoms as written (the training look)"),
    _c("rescan-mild", "H ×1.25, E ×0.75, blur σ 1 px, gamma 0.9, JPEG 70 (issue 15)",
       h_gain=1.25, e_gain=0.75, blur_sigma_px=1.0, gamma=0.9, jpeg_quality=70),
    _c("stain-strong", "H ×1.5, E ×0.6, stain vectors turned 8°",
       h_gain=1.5, e_gain=0.6, stain_rotation_deg=8.0),
    _c("pale", "H ×0.7, E ×0.7, brightness ×1.05 (a faded or thin section)",
       h_gain=0.7, e_gain=0.7, brightness=1.05),
    _c("blur-jpeg", "defocus σ 2 px, JPEG 50", blur_sigma_px=2.0, jpeg_quality=50),
    _c("mpp-0.5", "scanned at 0.5 µm/px (20×) instead of 0.243", mpp=0.5),
    Condition("more-imposters", "3× the generator's imposter density (hard negatives)",
              imposter_density=180.0),
    Condition("small-lesions", "no macro-metastasis: 3 micro, 4 ITC per tumour slide",
              lesions=(0, 3, 4)),
    Condition("faint-lesions", "tumour stain and nuclei 60 % of the way from the host's "
              "(lesion_contrast 0.6)", lesion_contrast=0.6),
]}

_GENERATOR_KEYS = ("lesions", "imposter_density", "lesion_contrast")
_RESCAN_KEYS = tuple(f.name for f in fields(Rescan))


def parse_condition(text: str) -> Condition:
    """A shipped name, or `NAME:key=value,...` (keys: the Rescan fields, `lesions`
    as MACRO/MICRO/ITC, `imposter_density`, `lesion_contrast`; `base=NAME` starts from a shipped one)."""
    if ":" not in text:
        if text not in CONDITIONS:
            raise WsiDetectError(f"unknown shift condition {text!r}; known: "
                                 f"{', '.join(CONDITIONS)} (or NAME:key=value,...)")
        return CONDITIONS[text]
    name, _, spec = text.partition(":")
    items = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    base = CONDITIONS[items.pop("base")] if "base" in items else Condition(name)
    rescan = asdict(base.rescan) if base.rescan else {}
    gen = {"lesions": base.lesions, "imposter_density": base.imposter_density,
           "lesion_contrast": base.lesion_contrast}
    for key, value in items.items():
        if key == "lesions":
            gen["lesions"] = tuple(int(v) for v in value.split("/"))
        elif key in ("imposter_density", "lesion_contrast"):
            gen[key] = float(value)
        elif key in _RESCAN_KEYS:
            rescan[key] = int(value) if key == "jpeg_quality" else float(value)
        else:
            raise WsiDetectError(f"condition {name}: unknown key {key!r}; use "
                                 f"{', '.join(_RESCAN_KEYS + _GENERATOR_KEYS)}")
    if len(gen["lesions"]) != 3:
        raise WsiDetectError(f"condition {name}: lesions=MACRO/MICRO/ITC")
    return Condition(name, spec, Rescan(**rescan) if rescan else None, **gen)


def _tag(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def build_condition(work: Path, condition: Condition, seeds: list[int], normal: set[int],
                    size: tuple[int, int],
                    log: Callable[[str], None] = print) -> list[tuple[int, Path]]:
    """[(seed, slide path)] of `condition`, written once into `work` (cached)."""
    gen = condition.generator()
    base_dir = work / f"base-{size[0]}x{size[1]}-{_tag(gen)}"
    base_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        tumour = seed not in normal
        name = f"{'tumor' if tumour else 'normal'}_{seed:03d}.tif"
        base = base_dir / name
        if not base.exists():
            t = time.perf_counter()
            lesions = dict(zip(("macro", "micro", "itc"), condition.lesions, strict=True))
            truth = write_phantom(base, seed=seed, size=size, tumour=tumour,
                                  lesions=lesions if tumour else None,
                                  imposter_density=condition.imposter_density,
                                  lesion_contrast=condition.lesion_contrast)
            log(f"  wrote {base_dir.name}/{name} in {time.perf_counter() - t:.0f} s: "
                f"{truth.counts()}")
        if condition.rescan is None:
            out.append((seed, base))
            continue
        folder = work / f"{condition.name}-{_tag({**gen, **condition.rescan.to_dict()})}"
        folder.mkdir(exist_ok=True)
        path = folder / name
        if not path.exists():
            t = time.perf_counter()
            rescan_slide(base, path, condition.rescan)
            log(f"  rescanned {folder.name}/{name} in {time.perf_counter() - t:.0f} s")
        out.append((seed, path))
    return out
