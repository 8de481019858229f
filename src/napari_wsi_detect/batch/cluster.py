"""Where a cohort runs: a dask LocalCluster on this machine, or an existing scheduler.

LocalCluster (the default): worker processes (a slide's run holds the GIL in places and
a crash must not take the client down), one task thread per worker, torch threads per
worker so that workers x torch threads <= cores, and a memory limit per worker (dask
pauses a worker near it and restarts one that goes over; its slide is then run again
elsewhere). With a CUDA device every worker declares one "GPU" resource and each slide
task asks for one, so one slide runs per GPU; worker i uses GPU i mod count.

An existing scheduler (`address`): its workers are whatever the cluster started
(`dask worker ADDRESS`, dask-jobqueue, dask-kubernetes); they must share the storage
that holds the slides, the model and the output folder (docs/batch.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import WsiDetectError

# A worker that dies this many times on one slide makes it a failed row ("killed
# worker") instead of taking down worker after worker (dask's own default is 3).
ALLOWED_FAILURES = 3


class ClusterError(WsiDetectError):
    """The scheduler cannot be reached, or it has no worker able to run the cohort."""


@dataclass
class ClusterInfo:
    address: str
    local: bool
    workers: int
    dashboard: str | None
    torch_threads: int | None = None
    memory_limit: int | None = None  # bytes per worker (local)
    gpu: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"scheduler": self.address, "local": self.local, "workers": self.workers,
                "dashboard": self.dashboard, "torch_threads": self.torch_threads,
                "memory_limit_bytes": self.memory_limit, "gpu": self.gpu}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_plan(workers: int | None, n_slides: int, gpu: bool,
               memory_limit: int | None) -> tuple[int, int, int]:
    """(workers, torch threads per worker, memory limit bytes per worker)."""
    import psutil

    cores = _cores()
    if gpu:
        import torch

        default = torch.cuda.device_count()
    else:
        default = cores
    n = max(1, min(int(workers or default), n_slides))
    threads = max(1, cores // n)
    if memory_limit is None:
        # Leave a tenth for the client and the OS page cache of the slides.
        memory_limit = int(psutil.virtual_memory().total * 0.9 / n)
    return n, threads, int(memory_limit)


class _IgnoreSigint(WorkerPlugin):
    """Worker plugin of the LocalCluster: its worker processes ignore SIGINT. A Ctrl-C in
    the terminal reaches the whole process group; the client then cancels cleanly
    (slides stop at an ROI boundary), which it cannot do if the workers die first."""

    name = "napari-wsi-detect-ignore-sigint"

    def setup(self, worker: Any) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Processes spawned meanwhile inherit an ignored SIGINT (until the plugin runs)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dashboard(client: Any, local: bool) -> str | None:
    import importlib.util

    # Without bokeh a scheduler still serves its HTTP routes, but no dashboard pages
    # (known only for the LocalCluster: a remote scheduler has its own packages).
    if local and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        info = client.scheduler_info()
        if "dashboard" not in (info.get("services") or {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # the link is a convenience, never a reason to fail
        return None


@contextlib.contextmanager
def connect(address: str | None, *, workers: int | None = None, n_slides: int = 1,
            gpu: bool = False, memory_limit: int | None = None,
            quiet_logs: bool = True) -> Iterator[tuple[Any, ClusterInfo]]:
    """(distributed.Client, ClusterInfo) for the cohort, closed on exit."""
    import importlib.util

    import dask
    from distributed import Client, LocalCluster

    level = logging.ERROR if quiet_logs else logging.WARNING
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the dask scheduler at {address} ({exc}); check the address "
                "(e.g. tcp://host:8786) and that the scheduler is running") from None
        try:
            n = len(client.scheduler_info().get("workers", {}))
            if n == 0:
                try:
                    client.wait_for_workers(1, timeout=60)
                except TimeoutError:
                    raise ClusterError(
                        f"the scheduler at {address} has no workers (waited 60 s); start "
                        f"some with `dask worker {address}`") from None
            info = client.scheduler_info().get("workers", {})
            if gpu and not any((w.get("resources") or {}).get("GPU") for w in info.values()):
                raise ClusterError(
                    f"--device cuda, but no worker of {address} declares a GPU: start GPU "
                    f"workers with `dask worker {address} --nthreads 1 --resources GPU=1` "
                    "(one per GPU, CUDA_VISIBLE_DEVICES set)")
            limits = [w.get("memory_limit") for w in info.values() if w.get("memory_limit")]
            yield client, ClusterInfo(str(client.scheduler.address), False, len(info),
                                      _dashboard(client, False),
                                      memory_limit=min(limits) if limits else None, gpu=gpu)
        finally:
            client.close()
        return
    n, threads, limit = local_plan(workers, n_slides, gpu, memory_limit)
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    with (dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}),
          _sigint_ignored()):
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, memory_limit=limit,
            resources={"GPU": 1} if gpu else None,
            dashboard_address=":0" if has_bokeh else None, silence_logs=level)
    try:
        client = Client(cluster)
        try:
            client.register_plugin(_IgnoreSigint())
            info = ClusterInfo(cluster.scheduler_address, True, n, _dashboard(client, True),
                               torch_threads=threads, memory_limit=limit, gpu=gpu)
            if info.dashboard is None:
                info.notes.append("dashboard: not available (install bokeh>=3.1 to get it)")
            yield client, info
        finally:
            client.close()
    finally:
        cluster.close()
