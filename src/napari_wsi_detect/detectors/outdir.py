"""A run's output folder: checked before any work, locked for the length of the run.

Checking first means a read-only folder, a file given as the folder, or a
`summary.json` that is a directory is found in a second, not after an hour of inference.
The lock (an `flock` on DIR/.wsi-detect.lock, released by the kernel if the process dies,
the file removed when the run ends)
stops two runs from writing one folder at once, which would interleave their stores.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import WsiDetectError

LOCK_NAME = ".wsi-detect.lock"
OUTPUT_NAMES = ("heatmap.zarr", "summary.json")


class OutputFolderError(WsiDetectError):
    """The output folder cannot be written, or another run is writing it."""


def check_out_dir(out: str | os.PathLike, results_file: str) -> Path:
    """Create `out` if needed and prove it is writable; OutputFolderError otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create the output folder {out}: {exc.strerror}") from None
    for name in (results_file, "summary.json"):
        if (out / name).is_dir():
            raise OutputFolderError(
                f"{out / name} is a folder; it must be a file: move it away or choose another "
                "output folder")
    if (out / "heatmap.zarr").exists() and not (out / "heatmap.zarr").is_dir():
        raise OutputFolderError(f"{out / 'heatmap.zarr'} is a file; it must be a zarr folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputFolderError(
            f"cannot write into the output folder {out} ({exc.strerror}): choose a writable "
            "folder") from None
    return out


class RunFolderLock:
    """Exclusive, non-blocking lock of an output folder for one run."""

    def __init__(self, out: str | os.PathLike) -> None:
        import fcntl

        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None
        for _ in range(10):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputFolderError(
                    f"another run is writing into {Path(out)} right now; wait for it to "
                    "finish or choose another output folder") from None
            # The holder before us may have removed the file between our open and lock:
            # then we locked a file nobody else will see; take the one at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return
            os.close(fd)
        raise OutputFolderError(f"cannot lock {Path(out)} (the lock file keeps changing)")

    def release(self) -> None:
        """Remove the lock file (a finished run leaves only its outputs), then unlock."""
        if self._fd is None:
            return
        import fcntl

        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
