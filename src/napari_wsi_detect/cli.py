"""`wsi-detect` command line: thin wrappers over the package's functions.

Each sub-command lives in `commands/<name>.py` with `register(subparsers)`, which adds
its parser and sets `func`. Errors of the package's own types print one line and exit 2;
Ctrl-C prints one line and exits 130 (see docs/errors.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import WsiDetectError

# Order is the order shown in --help.
# "detect" adds one command per registered detector (metastases, ...).
COMMAND_MODULES = [
    "info",
    "phantom",
    "rescan",
    "detect",
    "evaluate",
    "train",
    "batch",
    "bench",
    "demo",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-detect",
        description="Whole-slide metastasis, mitosis and tumour detection.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"napari_wsi_detect.commands.{name}").register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as `wsi-detect: warning: ...`, not Python's file:line + source line."""
    print(f"wsi-detect: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    # Ctrl-C anywhere, imports included (building the parser imports every command),
    # ends in one line and exit 130; a run's own handler keeps its store resumable.
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except WsiDetectError as exc:
        print(f"wsi-detect: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsi-detect: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
