"""Every metastasis model on every scanner/stain shift condition: one comparable table.

    .venv/bin/python scripts/evaluate_shift.py --models demo other.json \
        --variant demo-hyst:demo:hysteresis=0.3 --conditions none rescan-mild pale \
        --work /tmp/wsi-detect-shift

Test set (default): phantom seeds 604, 606, 609, 612 with metastases (each holds a
macro-metastasis) and 601, 602 normal, 16384 x 12288 px at 0.243 µm/px (the smallest
size that holds a macro-metastasis), lesions 1/2/2 asked per tumour slide, disjoint from training (100-107), validation (108-113), the first test
set (500-509) and the demo (9001). Every condition (phantom/shift_set.py: shipped names
or NAME:key=value,...) is written once into WORK (cached), each model x run options
runs once per slide into WORK/runs/... (reused when its summary.json is there), so a
second invocation only re-scores; post-processing values of a variant are applied at
scoring time on the stored map (cheap).

Models: `--models M ...` at their own defaults; `--variant NAME:MODEL:key=value,...`
with detector options (stage "run", e.g. alpha) and post-processing values (e.g.
threshold, opening_um) by their keys. Figures: evaluation/shift.py (FROC, slide AUC,
FP regions per slide, regions per true lesion, Dice and area ratio at map resolution,
highest normal-slide score). Output: one markdown table (stdout, and --markdown FILE),
and --out JSON with every figure per slide.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_wsi_detect.phantom.seeds import parse_seeds

# Test seeds: of 600-615 at 16384 x 12288 with lesions 1/2/2, only 604, 606, 609 and 612
# hold a macro-metastasis (phantom_layout); those four are the tumour slides, 601 and 602
# the normal ones (6 slides x 6 conditions fit the ~8 min per model budget here).
DEFAULT_SEEDS = ["601,602,604,606,609,612"]
DEFAULT_NORMAL = ["601,602"]
DEFAULT_CONDITIONS = ["none", "rescan-mild", "stain-strong", "pale", "blur-jpeg", "mpp-0.5"]


@dataclass
class Variant:
    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)  # stage "run"
    params: dict[str, Any] = field(default_factory=dict)  # stage "post"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_variant(text: str, detector: Any) -> Variant:
    """NAME:MODEL[:key=value,...]; keys are the detector's options or params."""
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SystemExit(f"--variant {text!r}: use NAME:MODEL[:key=value,...]")
    v = Variant(parts[0], parts[1])
    run_keys = {p.key for p in detector.options}
    post_keys = {p.key for p in detector.params}
    for kv in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        key, _, value = kv.partition("=")
        if key in run_keys:
            v.options[key] = _value(value)
        elif key in post_keys:
            v.params[key] = _value(value)
        else:
            raise SystemExit(f"--variant {v.name}: unknown key {key!r}; the detector takes "
                             f"{', '.join(sorted(run_keys | post_keys))}")
    return v


def run_tag(variant: Variant, config: dict, detector: Any, backend: str = "fp32") -> str:
    """Folder of a model + run options (+ backend when not fp32): a changed model,
    option or backend never reuses a map."""
    options = detector.resolve_options(variant.options, config)
    extra = {} if backend == "fp32" else {"backend": backend}
    key = json.dumps({"sha": config.get("weights_sha256"), **options, **extra}, sort_keys=True)
    stem = Path(str(config.get("_json_path", variant.model))).stem
    return f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def run_slide(variant: Variant, slide: Path, folder: Path, device: str,
              backend: str = "fp32") -> Any:
    """The stored result of `variant` on `slide` (run once)."""
    from napari_wsi_detect.detectors.job import DetectionRequest, detect
    from napari_wsi_detect.detectors.run_folder import load_result

    if (folder / "summary.json").is_file():
        return load_result(folder, need_summary=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    request = DetectionRequest(task="metastases", slide=str(slide), model=variant.model,
                               device=device, backend=backend,
                               options=dict(variant.options),
                               out=str(folder), overwrite=True)
    return detect(request, None)


def evaluate(variant: Variant, condition: Any, slides: list[tuple[int, Path]], work: Path,
             device: str, detector: Any, backend: str = "fp32") -> dict[str, Any]:
    from napari_wsi_detect.evaluation.shift import score_slide, summarise_condition
    from napari_wsi_detect.evaluation.truth_masks import load_truth_file
    from napari_wsi_detect.models.io import load_config

    config = load_config(detector.resolve_model(variant.model))
    tag = run_tag(variant, config, detector, backend)
    values = detector.defaults(config, variant.params)
    scored, seconds = [], 0.0
    for _seed, path in slides:
        t = time.perf_counter()
        res = run_slide(variant, path, work / "runs" / tag / path.parent.name / path.stem,
                        device, backend)
        seconds += time.perf_counter() - t
        regions = res.postprocess(**values)
        truth = load_truth_file(path.with_name(path.stem + ".tumour-mask.tif"))
        scored.append(score_slide(path.stem, regions, res.slide_score, res.geometry, truth))
    out = summarise_condition(scored)
    out.update({"variant": variant.name, "model": variant.model,
                "weights_sha256": config.get("weights_sha256"), "options": variant.options,
                "postprocess": values, "condition": condition.to_dict(),
                "run_folder": str(work / "runs" / tag), "backend": backend,
                "seconds": round(seconds, 1)})
    return out


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | condition | FROC | slide AUC | FP regions / slide (normal) | regions "
            "per lesion mean (max) | lesions missed | Dice | area ratio | highest normal "
            "score |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['condition']['name']} | {_f(r['froc'])} | "
            f"{_f(r['slide_auc'])} | {_f(r['fp_regions_per_slide'], '{:.1f}')} "
            f"({_f(r['fp_regions_per_normal_slide'], '{:.1f}')}) | "
            f"{_f(r['regions_per_lesion_mean'], '{:.1f}')} "
            f"({_f(r['regions_per_lesion_max'], '{:d}')}) | "
            f"{r['lesions_missed']}/{r['lesions']} | {_f(r['dice_mean'])} | "
            f"{_f(r['area_ratio'], '{:.2f}')} | {_f(r['highest_normal_score'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["demo"],
                    help="models at their own defaults ('demo' = the bundled one, or .json)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:MODEL:key=value,... (detector options / post-processing)")
    ap.add_argument("--conditions", nargs="+", default=DEFAULT_CONDITIONS,
                    help="shipped names (phantom/shift_set.CONDITIONS) or NAME:key=value,...")
    ap.add_argument("--seeds", nargs="+", default=DEFAULT_SEEDS)
    ap.add_argument("--normal-seeds", nargs="+", default=DEFAULT_NORMAL)
    ap.add_argument("--size", type=int, nargs=2, default=(16384, 12288), metavar=("W", "H"))
    ap.add_argument("--work", default="/tmp/wsi-detect-shift", help="slides and run folders")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="fp32",
                    help="inference backend of every run (models/backends.py); openvino "
                         "gives the fp32 map (|Δp| ~1e-7) about 1.8x faster on CPU")
    ap.add_argument("--out", default=None, help="JSON (default WORK/shift.json)")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    args = ap.parse_args(argv)

    from napari_wsi_detect._atomic import write_json_atomic, write_text_atomic
    from napari_wsi_detect.detectors import get_detector
    from napari_wsi_detect.phantom.shift_set import build_condition, parse_condition

    t0 = time.perf_counter()
    detector = get_detector("metastases")
    variants = [Variant(Path(m).stem if m != "demo" else "demo", m) for m in args.models]
    variants += [parse_variant(v, detector) for v in args.variant]
    conditions = [parse_condition(c) for c in args.conditions]
    seeds, normal = parse_seeds(args.seeds), set(parse_seeds(args.normal_seeds))
    if set(seeds) & (set(range(100, 114)) | set(range(500, 510)) | {9001}):
        print("warning: seeds overlap training/validation/test/demo seeds", file=sys.stderr)
    work = Path(args.work)
    size = (int(args.size[0]), int(args.size[1]))
    out = Path(args.out) if args.out else work / "shift.json"
    order = [c.name for c in conditions]
    rows: list[dict[str, Any]] = []
    for cond in conditions:
        print(f"condition {cond.name}: {cond.description}", flush=True)
        slides = build_condition(work, cond, seeds, normal, size,
                                 log=lambda s: print(s, flush=True))
        for v in variants:
            r = evaluate(v, cond, slides, work, args.device, detector, args.backend)
            print(f"  {v.name}: FROC {r['froc']:.3f}, regions/lesion "
                  f"{_f(r['regions_per_lesion_mean'], '{:.1f}')}, area ratio "
                  f"{_f(r['area_ratio'], '{:.2f}')}, {r['seconds']:.0f} s", flush=True)
            rows.append(r)
        # after every condition: a long run that stops still leaves its table so far
        rows.sort(key=lambda r: (r["variant"], order.index(r["condition"]["name"])))
        table = markdown_table(rows)
        write_json_atomic(out, {
            "command": " ".join([Path(sys.argv[0]).name,
                                 *(argv if argv is not None else sys.argv[1:])]),
            "test_set": {"seeds": seeds, "normal_seeds": sorted(normal & set(seeds)),
                         "size": list(size)},
            "rows": rows, "table": table, "seconds": round(time.perf_counter() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if args.markdown:
            write_text_atomic(Path(args.markdown), table + "\n")
    print(table)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
