"""Helpers shared by the long-running commands: progress bar, Ctrl-C, flag parsing."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


def region_arg(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(float(v)) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"region must be x,y,w,h in level-0 pixels (e.g. 10000,20000,4096,4096), got {text!r}"
        )
    return parts  # type: ignore[return-value]


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend, the same on every command that runs a network."""
    from ..models.backend_names import BACKEND_CHOICES, BACKEND_HELP, DEFAULT_BACKEND

    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKEND_CHOICES,
                        help=f"{BACKEND_HELP} (default {DEFAULT_BACKEND})")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def progress_bar(quiet: bool, desc: str = "detect") -> tuple[Any, Any]:
    """(tqdm bar or None, callback(done, total, eta)) on stderr."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="ROI", file=sys.stderr, dynamic_ncols=True, desc=desc,
               smoothing=0.1)

    def update(done: int, total: int, eta: float | None) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def tile_progress(quiet: bool, desc: str) -> tuple[Any, Any]:
    """(tqdm bar or None, progress(done, total) callback or None) for a job counted in tiles
    whose total is known only once it starts (phantom, rescan)."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=None, unit="tile", desc=desc, file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, progress


def cancel_on_sigint(cancel: threading.Event, bar: Any = None,
                     graceful: Callable[[], bool] | None = None) -> Any:
    """First Ctrl-C: stop after the ROI in flight (clean, resumable). Second: interrupt
    at once. While `graceful()` is False (before the first ROI: opening, model, tissue,
    planning) there is nothing to finish, so the first Ctrl-C interrupts at once.
    Returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set() or (graceful is not None and not graceful()):
            raise KeyboardInterrupt
        cancel.set()
        # On its own line, not glued to the progress bar.
        (bar.write if bar is not None else lambda m: print(m, file=sys.stderr))(
            "wsi-detect: stopping after the current ROI (Ctrl-C again to abort)...")

    return signal.signal(signal.SIGINT, handler)
