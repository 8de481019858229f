"""Train the bundled CPU demo metastasis model from phantom slides, reproducibly.

    .venv/bin/python scripts/train_demo_model.py            # writes models/bundled/demo.*

Phantom lymph nodes (seeds 100-107: 100-105 with metastases, 106-107 normal) are written
to a work folder, a small Fast ScanNet (width 1/16) is trained on them with hard
negative mining as stage 2, validated on held-out phantoms (seeds 108 tumour, 109
normal), and saved as `src/napari_wsi_detect/models/bundled/demo.safetensors` + `demo.json`
whose config records the phantom seeds, the training seed, steps and the scores
(held-out patch accuracy / AUC and the false positives per training slide on normal
tissue before and after hard negative mining). The stage-1 model (before hard negative
mining) is kept too, outside the package (`--stage1-out`, default WORK/stage1), for
scripts/evaluate_demo_model.py's stage 1 vs stage 2 comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "napari_wsi_detect" / "models" / "bundled"


def write_phantoms(work: Path, seeds: list[int], normal: set[int], size: tuple[int, int]
                   ) -> list[Path]:
    from napari_wsi_detect.phantom import write_phantom

    paths = []
    for s in seeds:
        kind = "normal" if s in normal else "tumor"
        path = work / f"{kind}_{s:03d}.tif"
        if not path.exists():
            write_phantom(path, seed=s, size=size, tumour=kind == "tumor")
        paths.append(path)
    return paths


def parse_augment(cls: type, pairs: list[str]) -> object:
    """An AugmentConfig with the KEY=VALUE fields changed (typed as the defaults)."""
    cfg = cls()
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in cls.__dataclass_fields__ or not value:
            raise SystemExit(f"--augment: not a field=value of AugmentConfig: {pair!r}")
        old = getattr(cfg, key)
        typed = (value.lower() in ("1", "true", "yes") if isinstance(old, bool)
                 else type(old)(value))
        setattr(cfg, key, typed)
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/wsi-detect-demo-training")
    ap.add_argument("--out", default=str(BUNDLED / "demo"), help="model path stem")
    ap.add_argument("--width", type=float, default=0.0625)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--hard-negative-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", type=int, nargs=2, default=(4096, 3072))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-model", default=None,
                    help="start from this model (e.g. 'demo') instead of random weights; "
                         "with --steps 0 the run mines hard negatives at once and only "
                         "fine-tunes (a further mining round)")
    ap.add_argument("--stage2-lr", type=float, default=None,
                    help="learning rate of stage 2 (default: --lr)")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--stage2-probs", type=float, nargs=3, default=(0.25, 0.25, 0.5),
                    metavar=("NORMAL", "HARD", "TUMOUR"),
                    help="stage-2 class probabilities")
    ap.add_argument("--hnm-max-per-slide", type=int, default=2000)
    ap.add_argument("--augment", nargs="*", default=[], metavar="KEY=VALUE",
                    help="AugmentConfig fields to change, e.g. stain_strength_min=0.6 "
                         "stain_strength_max=1.5 blur_sigma=1.5 jpeg_quality_min=50")
    ap.add_argument("--version", default="1", help="the model's 'version' in its JSON")
    ap.add_argument("--note", default=None, help="training.data.note in the model's JSON")
    ap.add_argument("--stage1-out", default=None,
                    help="also save the stage-1 model (before hard negative mining) at this "
                         "path stem, for scripts/evaluate_demo_model.py (default: "
                         "WORK/stage1; never inside the package)")
    args = ap.parse_args()

    from napari_wsi_detect.models.anchor import densify
    from napari_wsi_detect.models.io import load_model, save_model
    from napari_wsi_detect.training.augment import AugmentConfig
    from napari_wsi_detect.training.hard_negatives import mine_hard_negatives
    from napari_wsi_detect.training.metastases import TrainConfig, train_metastases
    from napari_wsi_detect.training.sampler import PatchSampler
    from napari_wsi_detect.training.slides import load_candidates, pair_annotations

    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_seeds, normal = list(range(100, 108)), {106, 107}
    val_seeds = [108, 109]
    (work / "train").mkdir(exist_ok=True)
    (work / "val").mkdir(exist_ok=True)
    slides = write_phantoms(work / "train", train_seeds, normal, tuple(args.size))
    val = write_phantoms(work / "val", val_seeds, {109}, tuple(args.size))
    t_data = time.perf_counter() - t0

    cfg = TrainConfig(width=args.width, steps=args.steps, hard_negatives=True,
                      hard_negative_steps=args.hard_negative_steps,
                      batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      workers=args.workers,
                      seed=args.seed, val_every=25, checkpoint_every=50, val_patches=128,
                      stage2_lr=args.stage2_lr, label_smoothing=args.label_smoothing,
                      init_model=args.init_model, hnm_max_per_slide=args.hnm_max_per_slide,
                      stage2_class_probs=dict(zip(("normal", "hard", "tumour"),
                                                  args.stage2_probs, strict=True)),
                      augment=parse_augment(AugmentConfig, args.augment),
                      device="cpu")
    # Stage 1 runs as its own call (stopping exactly at the end of stage 1, as an
    # interrupted run would) so that its model can be kept; the second call resumes from
    # that checkpoint, which the trainer reproduces exactly, and mines + runs stage 2.
    from napari_wsi_detect.training.checkpoints import latest_checkpoint

    stage1_out = Path(args.stage1_out) if args.stage1_out else work / "stage1"
    ck = latest_checkpoint(work / "run")
    done = json.loads((ck / "state.json").read_text())["step"] if ck else 0
    if args.steps == 0:
        print("no stage 1 (--steps 0): fine-tuning the initial model only")
    elif done <= args.steps:
        res1 = train_metastases(slides, work / "run", cfg, val_slides=val, resume=True,
                                stop_after=args.steps)
        net1, cfg1 = load_model(res1.config_path, device="cpu")
        cfg1 = {k: v for k, v in cfg1.items() if not k.startswith("_")
                and k not in ("weights", "weights_sha256", "created", "package_version",
                              "format_version")}
        cfg1["name"] = "demo-stage1"
        stage1_out.parent.mkdir(parents=True, exist_ok=True)
        print(f"stage-1 model saved to {save_model(net1, stage1_out, cfg1)[0]}")
    else:
        print(f"the run in {work / 'run'} is past stage 1 (step {done}); the stage-1 model "
              f"is not saved again (an earlier one may be at {stage1_out}.safetensors)")
    res = train_metastases(slides, work / "run", cfg, val_slides=val, resume=True)

    # False positives on the training slides' normal tissue after stage 2, counted the
    # same way as the mining after stage 1.
    model, mconfig = load_model(res.config_path, device="cpu")
    from napari_wsi_detect.engine.run import Normalisation

    sampler = PatchSampler(load_candidates(slides, pair_annotations(slides, None)))
    _, after = mine_hard_negatives(densify(model, 2).eval(), sampler, cfg.model_mpp,
                                   threshold=cfg.hnm_threshold, alpha=2,
                                   margin_um=cfg.hnm_margin_um,
                                   normalisation=Normalisation.from_config(mconfig))
    mining = res.mining or {}
    scores = {
        "heldout_patches": {"stage1": mining.get("stage1_validation"),
                            "stage2": res.final_val},
        "fp_per_training_slide_normal_tissue": {
            "stage1": mining.get("false_positives_per_slide"),
            "stage2": after.fp_per_slide},
    }
    seconds = time.perf_counter() - t0
    config = {k: v for k, v in mconfig.items() if not k.startswith("_")
              and k not in ("weights", "weights_sha256", "created", "package_version",
                            "format_version")}
    config["name"] = "demo"
    config["version"] = args.version
    config["training"] = {
        **(config.get("training") or {}),
        "slides": [p.name for p in slides], "val_slides": [p.name for p in val],
        "data": {"phantom_seeds": train_seeds, "normal_seeds": sorted(normal),
                 "val_seeds": val_seeds, "phantom_size": list(args.size),
                 "made_by": "scripts/train_demo_model.py",
                 "init_model": args.init_model,
                 **({"note": args.note} if args.note else {})},
        "scores": scores, "seconds_total": round(seconds, 1),
        "seconds_phantoms": round(t_data, 1),
    }
    config["training"].pop("annotations", None)
    # The look of the training slides, for stain_normalisation at inference (stain.py).
    from napari_wsi_detect.slide import open_slide
    from napari_wsi_detect.slide.tissue import compute_tissue_mask
    from napari_wsi_detect.stain import fit_reference

    opened = [open_slide(p) for p in slides]
    try:
        config["stain_reference"] = {
            **fit_reference(opened, [compute_tissue_mask(s) for s in opened]),
            "slides": [p.name for p in slides]}
    finally:
        for s in opened:
            s.close()
    weights, cfg_json = save_model(model, args.out, config)
    print(json.dumps({"model": str(weights), "scores": scores,
                      "seconds_total": round(seconds, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
