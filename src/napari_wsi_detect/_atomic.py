"""Atomic writes: a file appears complete or not at all (temporary name, then rename).

Every result file the package writes goes through here (DESIGN: "results land
atomically"). Temporary files are created in the target's folder, because a rename is
atomic only within one file system, and are named `.<final name>.<random>.tmp`, hidden
and recognisable. They get the mode an ordinary `open()` would give (0666 less the
umask), not mkstemp's 0600, so a shared results folder stays readable.

* `atomic_path(final)`: a context manager yielding a temporary path to write; renamed
  over `final` on success, removed on an exception (`final` keeps its old content).
* `atomic_paths(*finals)`: the same for files that belong together; renamed in the
  order given, so the file that vouches for the others (a slide for its truth, a model's
  JSON for its weights) goes last.
* `write_bytes_atomic`, `write_text_atomic`, `write_json_atomic` (NaN/inf -> null,
  numpy scalars and arrays -> Python, see `json_safe`).

Writers that infer the format from the file name (matplotlib, Pillow) need it given
explicitly: the temporary name ends in `.tmp`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_paths",
    "file_mode",
    "json_safe",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), since
    the `os.umask` round trip briefly sets it to 0 for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def _temp_beside(final: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_paths(*finals: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of `finals` (folders are created). When the
    block succeeds the temporaries are renamed over their finals in the order given;
    when it raises they are all removed and every final is left as it was."""
    paths = [Path(f) for f in finals]
    tmps: list[Path] = []
    try:
        for final in paths:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(_temp_beside(final))
        yield list(tmps)
        mode = file_mode()
        for tmp in tmps:
            os.chmod(tmp, mode)
        for tmp, final in zip(tmps, paths, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed over `final`, on
    an exception it is removed and `final` is left as it was."""
    with atomic_paths(final) as (tmp,):
        yield tmp


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def _is_numpy(v: Any) -> bool:  # ndarray or numpy scalar, without importing numpy
    return type(v).__module__ == "numpy" and hasattr(v, "tolist")


def json_safe(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars and arrays (values and dict keys) ->
    Python, tuples -> lists."""
    if isinstance(v, dict):
        return {(k.tolist() if _is_numpy(k) else k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if _is_numpy(v):
        return json_safe(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """`obj` as JSON (see `json_safe`), `indent` spaces, newline-terminated, atomically."""
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
