"""A run's output folder: checked before any work, locked for the length of the run,
and its outputs replaced as one set.

Checking first means a read-only folder, a file given as the folder, or a
`summary.json` that is a directory is found in a second, not after an hour of inference.
The lock (an `flock` on DIR/.wsi-detect.lock, released by the kernel if the process dies,
the file removed when the run ends)
stops two runs from writing one folder at once, which would interleave their stores.

The output set (heatmap.zarr, the results file, summary.json) changes together
(`commit_outputs`): the new members are first written beside the old ones under
temporary names (the store as heatmap.zarr.partial), then a journal naming the
replacements is written atomically (the commit point), then each replacement is made
and the journal removed. A kill before the journal leaves the previous set untouched
and a resumable .partial; a kill after it leaves a committed set that the next reader
or run installs (`finish_commit`) before looking at the folder. So a reader never sees
new regions beside an old summary, and a finished heatmap is never left only as
.partial.
"""

from __future__ import annotations

import json
import os
import shutil
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


def _journal(out: Path) -> Path:
    from ..engine.heatmap import COMMIT_JOURNAL

    return out / COMMIT_JOURNAL


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def committed(out: str | os.PathLike) -> bool:
    """True while `out` holds a committed output set not yet installed."""
    return _journal(Path(out)).exists()


def commit_outputs(out: str | os.PathLike, replacements: list[tuple[Path, Path]]) -> None:
    """Replace each final (a file or a heatmap folder in `out`) by its new version (a name
    beside it), all or none (see the module docstring). Call with the folder locked."""
    from .._atomic import write_json_atomic

    out = Path(out)
    steps = []
    for new, final in replacements:
        if new.parent != out or final.parent != out:
            raise ValueError("commit_outputs replaces names inside one folder")
        steps.append([new.name, final.name, _store_id(new) if new.is_dir() else None])
    _fsync_dir(out)  # the new members are on disk before the commit point
    write_json_atomic(_journal(out), {"replace": steps})
    _finish(out)


def _store_id(folder: Path) -> str | None:
    """The id a heatmap store was given when its output set was written."""
    from ..engine.heatmap import ATTR_KEY

    try:
        meta = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
        return meta["attributes"][ATTR_KEY].get("id")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE), so the final
    name never goes missing; False where the system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _install_folder(new: Path, final: Path, ident: str | None) -> None:
    aside = final.with_name(final.name + ".old")
    if aside.exists():  # past the commit point the previous store is never needed
        shutil.rmtree(aside)
    if final.exists() and ident is not None and _store_id(new) != ident:
        os.rename(new, aside)  # swapped before an interruption: `new` holds the old store
    elif final.exists() and _exchange(new, final):
        os.rename(new, aside)
    else:
        if final.exists():
            os.rename(final, aside)
        os.rename(new, final)


def _finish(out: Path) -> None:
    """Install a committed set: idempotent, so a kill during it is finished next time."""
    journal = _journal(out)
    try:
        steps = json.loads(journal.read_text(encoding="utf-8"))["replace"]
        triples = [(out / Path(a).name, out / Path(b).name, ident) for a, b, ident in steps]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputFolderError(
            f"{journal} is damaged ({exc}); the outputs in {out} may not belong together: "
            "run the detection again into this folder") from None
    for new, final, ident in triples:
        if not new.exists():
            continue  # installed before an interruption
        if new.is_dir():
            _install_folder(new, final, ident)
        else:
            os.replace(new, final)
    _fsync_dir(out)
    journal.unlink()
    for _, final, _ in triples:
        aside = final.with_name(final.name + ".old")
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)


def finish_commit(out: str | os.PathLike, locked: bool = False, rewrite: bool = False) -> bool:
    """Install an output set whose writing was interrupted after its commit point, and
    remove temporaries of an uncommitted one. True when a set was installed. Unless
    `locked` (the caller holds the folder's lock) the lock is taken for the moment; a
    run writing the folder right now is an OutputFolderError. With `rewrite` (a run
    that will write a whole new set) an unreadable journal is dropped, not an error."""
    from .._atomic import TMP_SUFFIX

    out = Path(out)
    journal = _journal(out)
    if not journal.exists():
        if locked:
            for tmp in out.glob(f".*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
            for stale in out.glob("*.copying"):
                shutil.rmtree(stale, ignore_errors=True)
        return False
    try:
        lock = None if locked else RunFolderLock(out)
    except OSError as exc:  # a read-only folder: cannot finish the writing here
        raise OutputFolderError(
            f"the outputs in {out} were interrupted while being written and the folder is "
            f"not writable ({exc.strerror}): run the detection again where it can write") from None
    try:
        _finish(out)
    except OutputFolderError:
        if not rewrite:
            raise
        journal.unlink(missing_ok=True)
        return finish_commit(out, locked=True)
    except OSError as exc:
        raise OutputFolderError(
            f"cannot finish writing the outputs in {out} ({exc.strerror}): run the "
            "detection again into it") from None
    finally:
        if lock is not None:
            lock.release()
    return True
