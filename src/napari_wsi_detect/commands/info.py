"""`wsi-detect info SLIDE [--json]`: what a slide file holds.

Prints path, vendor, levels (shape, downsample, synthetic), mpp, objective power,
associated images and the tissue fraction. An unreadable file is one line on stderr
and exit code 2 (cli.main turns the package's errors into that).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import WsiDetectError

_BACKENDS = {"OpenSlideSlide": "OpenSlide", "TiffSlide": "tifffile", "ImageSlide": "Pillow"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a slide's levels, pixel size and tissue fraction")
    p.add_argument("slide", help="slide or image file (.svs, .ndpi, .mrxs, .tif, .png, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument(
        "--no-tissue", action="store_true", help="skip the tissue fraction (reads a low level)"
    )
    p.set_defaults(func=run)


def tissue_fraction(slide: Any) -> tuple[float | None, str]:
    """(fraction, note). The tissue module is optional here: info must work without it."""
    try:
        from ..slide.tissue import compute_tissue_mask
    except ImportError as exc:
        return None, f"n/a (tissue detection unavailable: {exc})"
    try:
        fraction = float(compute_tissue_mask(slide).tissue_fraction)
    except WsiDetectError as exc:
        return None, f"n/a ({exc})"
    return fraction, f"{100 * fraction:.1f} % of the slide area"


def describe(slide: Any, with_tissue: bool = True) -> dict[str, Any]:
    """The facts `info` prints, as plain JSON-able values."""
    associated = {}
    for name in slide.associated_names:
        try:
            h, w = slide.associated_image(name).shape[:2]
            associated[name] = [h, w]
        except WsiDetectError:
            associated[name] = None
    info: dict[str, Any] = {
        "path": str(slide.path),
        "vendor": slide.vendor,
        "backend": _BACKENDS.get(type(slide).__name__, type(slide).__name__),
        "levels": [
            {
                "shape": list(lv.shape),
                "downsample": round(float(lv.downsample), 6),
                "synthetic": bool(lv.synthetic),
            }
            for lv in slide.levels
        ],
        "mpp": slide.mpp,
        "objective_power": slide.objective_power,
        "associated_images": associated,
    }
    if with_tissue:
        fraction, note = tissue_fraction(slide)
        info["tissue_fraction"] = fraction
        info["tissue_note"] = note
    return info


def format_text(info: dict[str, Any]) -> str:
    lines = [
        f"path: {info['path']}",
        f"vendor: {info['vendor']} (read with {info['backend']})",
        "levels:",
    ]
    for i, lv in enumerate(info["levels"]):
        h, w = lv["shape"]
        kind = "synthetic (computed by 2x area mean)" if lv["synthetic"] else "native"
        lines.append(f"  {i}: {w} x {h} px (w x h)  downsample {lv['downsample']:g}  {kind}")
    mpp = info["mpp"]
    lines.append(f"mpp: {mpp:.4g} µm/px" if mpp else "mpp: unknown (the file does not record it)")
    power = info["objective_power"]
    lines.append(f"objective power: {power:g}x" if power else "objective power: unknown")
    assoc = info["associated_images"]
    if assoc:
        parts = [f"{n} ({s[1]} x {s[0]})" if s else f"{n} (unreadable)" for n, s in assoc.items()]
        lines.append("associated images: " + ", ".join(parts))
    else:
        lines.append("associated images: none")
    if "tissue_note" in info:
        lines.append(f"tissue: {info['tissue_note']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..slide import open_slide

    with open_slide(args.slide) as slide:
        info = describe(slide, with_tissue=not args.no_tissue)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print(format_text(info))
    return 0
