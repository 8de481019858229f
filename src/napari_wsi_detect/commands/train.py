"""`wsi-detect train TASK ...`: train a model on annotated slides.

    wsi-detect train metastases --slides camelyon16/train --annotations camelyon16/xml \\
        --out models/run1 --width 0.125 --steps 20000 --workers 4 --hard-negatives

Slides are files or folders (Camelyon16 layout: tumor_*/normal_* slides; the annotation of
`tumor_001.tif` is `tumor_001.xml|.geojson|.json` beside it or in an --annotations folder).
The model lands in OUT/<task>.safetensors + .json with metrics.csv, learning_curve.png and
checkpoints/ (resume with --resume).

One sub-command per entry of `training.TRAINING_TASKS`. The input flags (slides,
annotations, out, resume, progress) are the same for every task; the rest come from the
task's config dataclass: every field whose metadata has a "help" is a flag
(`batch_size` -> `--batch-size`), its default the field's default, its type the field's
annotation unless the metadata names `type`; `choices`, `nargs`, `metavar` pass through to
argparse and `min` is checked before training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from ..errors import WsiDetectError

_ARGPARSE_KEYS = ("choices", "nargs", "metavar")


def register(sub: argparse._SubParsersAction) -> None:
    from ..training import TRAINING_TASKS, training_task

    p = sub.add_parser("train", help="train a model on annotated slides")
    tsub = p.add_subparsers(dest="task", metavar="TASK")
    for task in TRAINING_TASKS:
        config_cls, _, title = training_task(task)
        t = tsub.add_parser(task, help=title, description=title)
        _add_inputs(t)
        add_config_arguments(t, config_cls)
        t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
        t.add_argument("--no-progress", action="store_true", help="no progress bar")
        t.set_defaults(func=run)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slides", nargs="+", required=True,
                   help="training slide files and/or folders of slides")
    p.add_argument("--annotations", nargs="*", default=None,
                   help="tumour annotation files (one per slide, same order) or folders "
                        "(looked up by slide name); default: beside each slide")
    p.add_argument("--out", required=True, help="output folder (model, metrics, checkpoints)")
    p.add_argument("--val-slides", nargs="*", default=None,
                   help="held-out validation slides (default: a fixed patch set of the "
                        "training slides, which measures fit, not generalisation)")
    p.add_argument("--val-annotations", nargs="*", default=None)


def cli_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of `config_cls` that are command-line flags."""
    return [f for f in dataclasses.fields(config_cls) if "help" in f.metadata]


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _value_type(annotation: Any) -> Any:
    # `float | None` -> float: None is what the default says, never what is typed.
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    # Config modules raise ValueError with a message fit to show; argparse shows only
    # ArgumentTypeError's own message, anything else as "invalid <name> value".
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_config_arguments(p: argparse.ArgumentParser, config_cls: type) -> None:
    hints = typing.get_type_hints(config_cls)
    for f in cli_fields(config_cls):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        kind = _value_type(hints[f.name])
        text = meta["help"]
        if kind is bool:
            action = "store_true" if not default else argparse.BooleanOptionalAction
            p.add_argument(flag, action=action, default=default, help=text)
            continue
        if default is not None and "default" not in text:
            text = f"{text} (default: {default})"
        extra = {k: meta[k] for k in _ARGPARSE_KEYS if k in meta}
        parse = meta.get("type", kind if kind in (int, float, str) else None)
        if parse is None:
            raise TypeError(f"{config_cls.__name__}.{f.name}: a CLI field of type {kind} "
                            "needs a 'type' in its metadata")
        p.add_argument(flag, type=_argparse_type(parse), default=default, help=text, **extra)


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    """The config the flags describe (fields that are not flags keep their defaults)."""
    values = {}
    for f in cli_fields(config_cls):
        value = getattr(args, f.name)
        minimum = f.metadata.get("min")
        if minimum is not None and value < minimum:
            raise WsiDetectError(f"--{f.name.replace('_', '-')} must be at least {minimum}")
        values[f.name] = value
    return config_cls(**values)


def run(args: argparse.Namespace) -> int:
    from ..training import training_task

    config_cls, train, _ = training_task(args.task)
    cfg = config_from_args(config_cls, args)
    train(args.slides, args.out, cfg, annotations=args.annotations,
          val_slides=args.val_slides, val_annotations=args.val_annotations,
          resume=args.resume, progress=not args.no_progress)
    return 0
