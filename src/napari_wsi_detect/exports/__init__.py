"""Results other tools can open: an OME-Zarr (NGFF 0.4) copy of every run's maps and
masks (`ngff.py`), a QuPath overlay (`qupath.py`), all built from a finished run folder
or result (`run_view.py`) without naming a task. See docs/results-elsewhere.md.

`after_write(out, result)` is what `DetectionResult.write` calls once a run's output set
is in place: it writes ``out/maps.ome.zarr``. The copy is derived data: when it cannot
be written the run's results stand, a warning says why, and no stale copy is left.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any


def after_write(out: str | os.PathLike, result: Any) -> Path | None:
    """Write `out`/maps.ome.zarr for `result` (just written to `out`)."""
    from ..errors import WsiDetectError
    from .ngff import NGFF_NAME, write_ngff
    from .run_view import view_of

    target = Path(out) / NGFF_NAME
    try:
        return write_ngff(view_of(result, out), target)
    except (WsiDetectError, OSError, ValueError, TypeError) as exc:
        shutil.rmtree(target, ignore_errors=True)  # never leave the previous run's copy
        warnings.warn(f"the OME-Zarr copy {target} was not written ({exc}); the run's "
                      f"results are complete: run 'wsi-detect export ngff {out}' to retry",
                      stacklevel=2)
        return None


__all__ = ["after_write"]
