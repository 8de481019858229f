"""Streaming whole-slide runner: prefetching reader threads -> batched dense model.

Design (docs/engine.md):

* ``n_readers`` threads take ROIs from a shared list and put (roi, uint8 image) on a
  bounded queue (``queue_size``, default 2 x batch). Slide decoding (OpenSlide, tifffile,
  PIL) releases the GIL, so reading overlaps the model.
* The consumer (the caller's thread, inside the generator) takes ROIs off the queue,
  batches them, runs the model under ``torch.inference_mode`` in channels_last float32,
  writes each tile to the store (if any) and yields a ``HeatmapTile``.
* Memory is bounded by queue + readers + one batch of ROIs, whatever the slide size.
* Cancellation: ``cancel_event`` is checked before each ROI is taken and before each
  batch runs, so a cancel stops within one batch; readers are told to stop, the queue is
  drained and the threads joined, then ``CancelledError`` is raised. The same clean-up
  runs on any exception (e.g. in the model) and when the caller abandons the generator.
* ``stats.io_wait`` is the time the consumer was blocked waiting for the readers;
  ``stats.io_wait_fraction`` = io_wait / elapsed (0 = the model never waited).
  ``model_time`` = ``tensor_time`` (batch -> normalised device tensor) + ``net_time``
  (forward and the copy back); ``store_time`` is the tile writes (bench wholeslide).
* CUDA: the uint8 batch is stacked into pinned host memory and copied with
  ``non_blocking=True`` (the copy overlaps the normalisation kernels' launch; pageable
  memory would be staged through a hidden pinned buffer first). Each forward runs with
  TF32 off (``models.device.fp32_exact``) unless ``allow_tf32``: TF32 convolutions are
  cuDNN's default and round inputs to 10 mantissa bits, which breaks the exactness test.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CancelledError, WsiDetectError
from ..models.device import fp32_exact
from .heatmap import HeatmapStore
from .plan import ROI, MapGeometry
from .reader import read_roi

ProgressCallback = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class HeatmapTile:
    """One computed ROI block of the whole-slide map."""

    r0: int
    c0: int
    probs: np.ndarray  # (rows, cols) float32 tumour probability
    roi_index: int
    done: int  # ROIs finished in this run, this one included
    total: int  # ROIs this run computes
    elapsed: float  # seconds since the run started
    eta: float | None  # seconds left (None before the first tile)


@dataclass
class RunStats:
    total: int = 0
    done: int = 0
    elapsed: float = 0.0
    io_wait: float = 0.0  # consumer blocked on the queue (s)
    model_time: float = 0.0  # tensor_time + net_time (s)
    tensor_time: float = 0.0  # stack, host->device copy, normalisation (s)
    net_time: float = 0.0  # forward + device->host copy of the probabilities (s)
    store_time: float = 0.0  # HeatmapStore.write_tile (s)
    read_time: float = 0.0  # summed over reader threads (s)
    cancelled: bool = False
    cancelled_after: int = 0  # ROIs finished after the cancel was seen set (<= 1 batch)

    @property
    def io_wait_fraction(self) -> float:
        return self.io_wait / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rois_total": self.total,
            "rois_done": self.done,
            "elapsed_s": round(self.elapsed, 4),
            "io_wait_s": round(self.io_wait, 4),
            "model_s": round(self.model_time, 4),
            "tensor_s": round(self.tensor_time, 4),
            "net_s": round(self.net_time, 4),
            "store_s": round(self.store_time, 4),
            "read_s_summed": round(self.read_time, 4),
            "io_wait_fraction": round(self.io_wait_fraction, 4),
            "cancelled": self.cancelled,
        }


@dataclass(frozen=True)
class Normalisation:
    """Model input = (rgb / 255 - mean) / std, per channel (RGB order)."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Normalisation:
        """Read the model config's normalisation: ``config["normalisation"]`` (or
        ``"normalization"``, or top-level) ``{"mean": [r, g, b], "std": [r, g, b]}`` in
        [0, 1] units (values > 1 are taken as 0-255 units). Default: rgb / 255."""
        config = config or {}
        norm = config.get("normalisation") or config.get("normalization") or config
        if not isinstance(norm, dict) or "mean" not in norm:
            return cls()
        mean = [float(v) for v in np.broadcast_to(norm["mean"], (3,))]
        std = [float(v) for v in np.broadcast_to(norm.get("std", 1.0), (3,))]
        if max(mean) > 1.0 or max(std) > 1.0:
            mean, std = [m / 255 for m in mean], [s / 255 for s in std]
        if min(std) <= 0:
            raise WsiDetectError(f"model normalisation std must be > 0, got {std}")
        return cls(tuple(mean), tuple(std))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


_DONE = object()


@dataclass
class _Failure:
    error: BaseException


@dataclass
class HeatmapRunner:
    """Iterate to run; see the module docstring. `model` maps a (N, 3, H, W) float32
    batch to (N, H', W') probabilities with H' = (H - L_p)/S + 1 (a dense FCN)."""

    slide: Any
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]
    geometry: MapGeometry
    rois: Sequence[ROI]
    device: str | torch.device = "cpu"
    batch_size: int = 1
    store: HeatmapStore | None = None
    progress_cb: ProgressCallback | None = None
    cancel_event: threading.Event | None = None
    n_readers: int = 2
    normalisation: Normalisation = field(default_factory=Normalisation)
    queue_size: int | None = None
    reader: Callable[[Any, MapGeometry, ROI], np.ndarray] = read_roi
    stats: RunStats = field(default_factory=RunStats)
    allow_tf32: bool = False  # CUDA only: True lets cuDNN/cuBLAS round fp32 to TF32

    @property
    def pin_memory(self) -> bool:
        """Stack batches in page-locked memory: only for a CUDA device (pinning is a
        cost with no gain on CPU, and an error on builds without CUDA)."""
        return torch.device(self.device).type == "cuda"

    def __iter__(self) -> Iterator[HeatmapTile]:
        return self._run()

    # -- readers -------------------------------------------------------------------------
    def _reader_loop(self, todo: Iterator[ROI], lock: threading.Lock,
                     out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                with lock:
                    roi = next(todo, None)
                if roi is None:
                    break
                t = time.perf_counter()
                img = self.reader(self.slide, self.geometry, roi)
                with lock:
                    self.stats.read_time += time.perf_counter() - t
                if not self._put(out, (roi, img), stop):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(out, _Failure(exc), stop)
            return
        self._put(out, _DONE, stop)

    @staticmethod
    def _put(out: queue.Queue, item: object, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    # -- consumer ------------------------------------------------------------------------
    def _cancelled(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()

    def _run(self) -> Iterator[HeatmapTile]:
        batch_size = max(1, int(self.batch_size))
        n_readers = max(1, min(int(self.n_readers), len(self.rois) or 1))
        out: queue.Queue = queue.Queue(maxsize=self.queue_size or 2 * batch_size)
        stop = threading.Event()
        lock = threading.Lock()
        todo = iter(list(self.rois))
        stats = self.stats
        stats.total, stats.done = len(self.rois), 0
        start = time.perf_counter()
        threads = [
            threading.Thread(target=self._reader_loop, args=(todo, lock, out, stop),
                             name=f"wsi-detect-reader-{i}", daemon=True)
            for i in range(n_readers)
        ]
        if self.rois:
            for th in threads:
                th.start()
        else:
            threads = []
        finished = 0
        batch: list[tuple[ROI, np.ndarray]] = []
        try:
            while finished < len(threads):
                if self._cancelled():
                    raise CancelledError(
                        f"cancelled after {stats.done} of {stats.total} ROIs"
                    )
                t = time.perf_counter()
                try:
                    item = out.get(timeout=0.05)
                except queue.Empty:
                    stats.io_wait += time.perf_counter() - t
                    continue
                stats.io_wait += time.perf_counter() - t
                if item is _DONE:
                    finished += 1
                    continue
                if isinstance(item, _Failure):
                    raise item.error
                batch.append(item)
                if len(batch) >= batch_size:
                    yield from self._run_batch(batch, start)
                    batch = []
            if batch:
                if self._cancelled():
                    raise CancelledError(f"cancelled after {stats.done} of {stats.total} ROIs")
                yield from self._run_batch(batch, start)
        except CancelledError:
            stats.cancelled = True
            raise
        finally:
            stop.set()
            # Drain so no reader stays blocked on a full queue, then wait for them.
            while any(th.is_alive() for th in threads):
                try:
                    out.get(timeout=0.02)
                except queue.Empty:
                    pass
            for th in threads:
                th.join()
            stats.elapsed = time.perf_counter() - start

    def _to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        # uint8 crosses to the device (4x less traffic than float32); NHWC memory viewed as
        # NCHW is exactly channels_last, so no transpose copy is made.
        host = host_batch(images, pin_memory=self.pin_memory)
        x = host.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        std = torch.tensor(self.normalisation.std, device=x.device).view(1, 3, 1, 1)
        mean = torch.tensor(self.normalisation.mean, device=x.device).view(1, 3, 1, 1)
        # (x/255 - mean)/std as one scale and one shift, in place.
        x.mul_(1.0 / (255.0 * std)).sub_(mean / std)
        return x.contiguous(memory_format=torch.channels_last)

    def _run_batch(self, batch: list[tuple[ROI, np.ndarray]], start: float
                   ) -> Iterator[HeatmapTile]:
        t = time.perf_counter()
        x = self._to_tensor([im for _, im in batch])
        t_net = time.perf_counter()
        dev = torch.device(self.device)
        exact = fp32_exact(dev) if not self.allow_tf32 else contextlib.nullcontext()
        with torch.inference_mode(), exact:
            probs = self.model(x)
        probs = probs.float().cpu().numpy()
        t_end = time.perf_counter()
        self.stats.tensor_time += t_net - t
        self.stats.net_time += t_end - t_net
        self.stats.model_time += t_end - t
        cancelled_before = self._cancelled()
        for (roi, _), p in zip(batch, probs, strict=True):
            if p.shape[0] < roi.rows or p.shape[1] < roi.cols:
                raise WsiDetectError(
                    f"the model gave a {p.shape} map for a {roi.rows}x{roi.cols}-cell ROI: "
                    "its patch size or stride does not match the map geometry"
                )
            tile_probs = np.ascontiguousarray(p[: roi.rows, : roi.cols], dtype=np.float32)
            if self.store is not None:
                t_store = time.perf_counter()
                self.store.write_tile(roi.r0, roi.c0, tile_probs)
                self.stats.store_time += time.perf_counter() - t_store
            self.stats.done += 1
            if cancelled_before:
                self.stats.cancelled_after += 1
            elapsed = time.perf_counter() - start
            done, total = self.stats.done, self.stats.total
            eta = elapsed / done * (total - done)
            if self.progress_cb is not None:
                self.progress_cb(done, total, eta)
            yield HeatmapTile(roi.r0, roi.c0, tile_probs, roi.index, done, total, elapsed, eta)


def host_batch(images: list[np.ndarray], pin_memory: bool = False) -> torch.Tensor:
    """(N, H, W, 3) uint8 CPU tensor of `images` (one copy), in page-locked memory when
    `pin_memory`. Mixed edge/full ROIs: padded with white, which is exactly what reading
    past the slide edge gives; the extra cells are cropped off after."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    out = torch.empty((len(images), h, w, 3), dtype=torch.uint8, pin_memory=pin_memory)
    arr = out.numpy()
    for i, im in enumerate(images):
        if im.shape[:2] != (h, w):
            arr[i] = 255
        arr[i, : im.shape[0], : im.shape[1]] = im[..., :3]
    return out


def run_heatmap(
    slide: Any,
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    geometry: MapGeometry,
    rois: Sequence[ROI],
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    store: HeatmapStore | None = None,
    progress_cb: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    n_readers: int = 2,
    normalisation: Normalisation | None = None,
) -> Iterator[HeatmapTile]:
    """Run the dense `model` over `rois`, yielding tiles as they finish (see HeatmapRunner)."""
    runner = HeatmapRunner(
        slide, model, geometry, rois, device=device, batch_size=batch_size, store=store,
        progress_cb=progress_cb, cancel_event=cancel_event, n_readers=n_readers,
        normalisation=normalisation or Normalisation(),
    )
    return iter(runner)


def stitch(tiles: Iterator[HeatmapTile], geometry: MapGeometry) -> np.ndarray:
    """Collect tiles into a (rows, cols) float32 map, NaN where nothing was computed."""
    out = np.full(geometry.shape, np.nan, dtype=np.float32)
    for t in tiles:
        n, m = t.probs.shape
        out[t.r0 : t.r0 + n, t.c0 : t.c0 + m] = t.probs
    return out
