"""`wsi-detect train metastases ...`: train a Fast ScanNet metastasis model.

    wsi-detect train metastases --slides camelyon16/train --annotations camelyon16/xml \\
        --out models/run1 --width 0.125 --steps 20000 --workers 4 --hard-negatives

Slides are files or folders (Camelyon16 layout: tumor_*/normal_* slides; the annotation of
`tumor_001.tif` is `tumor_001.xml|.geojson|.json` beside it or in an --annotations folder).
The model lands in OUT/metastases.safetensors + .json with metrics.csv,
learning_curve.png and checkpoints/ (resume with --resume).
"""

from __future__ import annotations

import argparse

from ..errors import WsiDetectError


def _class_probs(text: str) -> dict[str, float]:
    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"class probabilities look like normal=0.5,tumour=0.5 (got {text!r})") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on annotated slides")
    tsub = p.add_subparsers(dest="task", metavar="TASK")
    m = tsub.add_parser("metastases", help="Fast ScanNet metastasis classifier (244 px patches)")
    m.add_argument("--slides", nargs="+", required=True,
                   help="training slide files and/or folders of slides")
    m.add_argument("--annotations", nargs="*", default=None,
                   help="tumour annotation files (one per slide, same order) or folders "
                        "(looked up by slide name); default: beside each slide")
    m.add_argument("--out", required=True, help="output folder (model, metrics, checkpoints)")
    m.add_argument("--val-slides", nargs="*", default=None,
                   help="held-out validation slides (default: a fixed patch set of the "
                        "training slides, which measures fit, not generalisation)")
    m.add_argument("--val-annotations", nargs="*", default=None)
    m.add_argument("--width", type=float, default=0.125, help="channel width multiplier")
    m.add_argument("--steps", type=int, default=1000, help="stage-1 training steps")
    m.add_argument("--batch-size", type=int, default=16)
    m.add_argument("--lr", type=float, default=0.01)
    m.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    m.add_argument("--class-probs", type=_class_probs, default=None,
                   help="patch class probabilities, e.g. normal=0.5,tumour=0.5")
    m.add_argument("--class-weights", type=float, nargs=2, default=None,
                   metavar=("NORMAL", "TUMOUR"), help="cross-entropy class weights")
    m.add_argument("--workers", type=int, default=1,
                   help="prefetching producer processes (0 = read in the training loop)")
    m.add_argument("--queue-size", type=int, default=4, help="batches prefetched at most")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--model-mpp", type=float, default=0.243,
                   help="µm/px the model works at (slides at other mpp are resampled)")
    m.add_argument("--hard-negatives", action="store_true",
                   help="stage 2: mine the stage-1 model's false positives and train on")
    m.add_argument("--hard-negative-steps", type=int, default=0,
                   help="stage-2 steps (default: half of --steps)")
    m.add_argument("--hnm-threshold", type=float, default=0.5)
    m.add_argument("--hnm-alpha", type=int, default=2)
    m.add_argument("--val-every", type=int, default=100)
    m.add_argument("--val-patches", type=int, default=128)
    m.add_argument("--checkpoint-every", type=int, default=100)
    m.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_metastases)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_metastases(args: argparse.Namespace) -> int:
    from ..training.trainer import TrainConfig, train_metastases

    if args.steps < 1 or args.batch_size < 1:
        raise WsiDetectError("--steps and --batch-size must be at least 1")
    cfg = TrainConfig(
        width=args.width, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, workers=args.workers, queue_size=args.queue_size,
        seed=args.seed, model_mpp=args.model_mpp, hard_negatives=args.hard_negatives,
        hard_negative_steps=args.hard_negative_steps, hnm_threshold=args.hnm_threshold,
        hnm_alpha=args.hnm_alpha, val_every=args.val_every, val_patches=args.val_patches,
        checkpoint_every=args.checkpoint_every, device=args.device,
        class_weights=list(args.class_weights) if args.class_weights else None,
    )
    if args.class_probs:
        cfg.class_probs = args.class_probs
    train_metastases(
        args.slides, args.out, cfg, annotations=args.annotations,
        val_slides=args.val_slides, val_annotations=args.val_annotations,
        resume=args.resume, progress=not args.no_progress,
    )
    return 0
