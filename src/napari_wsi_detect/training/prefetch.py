"""Asynchronous sample prefetching: N producer processes → one bounded queue → the loop.

The Fast ScanNet paper keeps the GPU busy by reading and augmenting patches in several
producer processes while the network trains (METHODS §1 (5)). This is that design,
hand-rolled on `multiprocessing` (spawn context by default: no fork of a process that
holds torch threads or open slide handles):

* The consumer hands out step numbers through a task queue, at most `queue_size` ahead
  of the step it is training, so memory is bounded: ≤ queue_size batches wait in the
  result queue and each producer holds at most one more in its hands.
* Each producer opens its own slide handles (`source.open()` runs in the producer) and
  makes batch k with `source.make_batch(k)`. A batch depends only on (seed, k), so
  results are put back in step order and training is bit-for-bit the same with 0, 1 or
  8 producers, and after a resume.
* A producer's exception travels to the consumer as text and is raised there as
  `ProducerError` with the producer's message and traceback; a producer that dies
  without a word (killed, segfault in a decoder) is noticed too.
* `close()` (also on exceptions and Ctrl-C via the context manager) stops, drains,
  joins and, if need be, terminates every producer: no process outlives the prefetcher.
  Producers ignore SIGINT so that Ctrl-C reaches only the parent, which shuts them down.

`n_producers=0` runs the source synchronously in the loop (the benchmark's baseline).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import WsiDetectError

_POLL = 0.1  # s: how often blocked calls look at the stop flag / producer health


class BatchSource(Protocol):
    """What producers run. Must be picklable; `open` is called in the producer."""

    def open(self) -> None: ...

    def make_batch(self, step: int) -> Any: ...

    def close(self) -> None: ...


class ProducerError(WsiDetectError):
    """A prefetching producer failed; the message carries the producer's error."""


def _producer_main(index: int, source: BatchSource, tasks: Any, results: Any,
                   stop: Any, produced: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    step = None
    try:
        source.open()
        while not stop.is_set():
            try:
                step = tasks.get(timeout=_POLL)
            except queue.Empty:
                continue
            if step is None:
                break
            item = source.make_batch(step)
            while not stop.is_set():
                try:
                    results.put(("ok", step, item), timeout=_POLL)
                    with produced.get_lock():
                        produced.value += 1
                    break
                except queue.Full:
                    continue
    except BaseException as exc:  # noqa: BLE001 - everything must reach the consumer
        msg = (f"prefetch producer {index} failed at step {step}: "
               f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        try:
            results.put(("error", step, msg), timeout=5)
        except Exception:  # noqa: BLE001 - the consumer also notices the exit code
            pass
    finally:
        try:
            source.close()
        except Exception:  # noqa: BLE001
            pass
        if stop.is_set():
            # Shutting down: do not wait at exit for the queue's feeder thread to flush
            # into a pipe nobody reads any more (the classic multiprocessing hang).
            results.cancel_join_thread()
        # Otherwise the exit flushes what was put (an error report above all) into the
        # pipe; the consumer is reading, and close() drains it if not.


class Prefetcher:
    """Yields `source.make_batch(k)` for k = start, start+1, ... in order.

    >>> with Prefetcher(source, n_producers=2, queue_size=4) as pf:
    ...     for step, batch in zip(range(100), pf): ...
    """

    def __init__(self, source: BatchSource, n_producers: int = 2, queue_size: int = 4,
                 start_step: int = 0, context: str = "spawn") -> None:
        if n_producers < 0 or queue_size < 1:
            raise ValueError("n_producers must be ≥ 0 and queue_size ≥ 1")
        self.source = source
        self.n_producers = int(n_producers)
        self.queue_size = int(queue_size)
        self.next_step = int(start_step)
        self.wait_time = 0.0  # seconds the consumer spent blocked waiting for a batch
        self._next_task = int(start_step)
        self._pending: dict[int, Any] = {}
        self._procs: list[Any] = []
        self._closed = False
        if self.n_producers == 0:
            self.source.open()
            return
        ctx = mp.get_context(context)
        self._tasks = ctx.Queue()
        self._results = ctx.Queue(maxsize=self.queue_size)
        self._stop = ctx.Event()
        self.produced = ctx.Value("q", 0)
        for i in range(self.n_producers):
            p = ctx.Process(target=_producer_main, name=f"wsi-detect-prefetch-{i}",
                            args=(i, source, self._tasks, self._results, self._stop,
                                  self.produced), daemon=True)
            p.start()
            self._procs.append(p)
        self._fill_tasks()

    # -- consumer side -------------------------------------------------------------
    def _fill_tasks(self) -> None:
        # Steps handed out but not yet consumed ≤ queue_size + n_producers: the queue
        # holds queue_size and each producer one batch in progress.
        while self._next_task < self.next_step + self.queue_size + self.n_producers:
            self._tasks.put(self._next_task)
            self._next_task += 1

    def _check_producers(self) -> None:
        # Producers only stop when told to, so any exit while we wait is a failure.
        dead = [(i, p.exitcode) for i, p in enumerate(self._procs) if not p.is_alive()]
        if not dead:
            return
        try:  # its error report may have landed just after our last look
            while True:
                kind, k, payload = self._results.get(timeout=_POLL)
                if kind == "error":
                    self.close()
                    raise ProducerError(payload)
                self._pending[k] = payload
        except queue.Empty:
            pass
        i, code = dead[0]
        self.close()
        raise ProducerError(
            f"prefetch producer {i} stopped (exit code {code}) without reporting an error "
            "(killed, out of memory, a crash in a slide decoder, or a script without an "
            "`if __name__ == '__main__':` guard, which spawned processes need)"
        )

    def get(self) -> Any:
        """The batch for `next_step` (blocking)."""
        if self._closed:
            raise RuntimeError("prefetcher is closed")
        step = self.next_step
        t0 = time.perf_counter()
        if self.n_producers == 0:
            item = self.source.make_batch(step)
        else:
            while step not in self._pending:
                try:
                    kind, k, payload = self._results.get(timeout=_POLL)
                except queue.Empty:
                    self._check_producers()
                    continue
                if kind == "error":
                    self.close()
                    raise ProducerError(payload)
                self._pending[k] = payload
            item = self._pending.pop(step)
        self.wait_time += time.perf_counter() - t0
        self.next_step += 1
        if self.n_producers:
            self._fill_tasks()
        return item

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.get()

    # -- shutdown ------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop every producer; afterwards none is alive. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.n_producers == 0:
            self.source.close()
            return
        self._stop.set()
        # Producers exit only once their queue feeder threads have written what they
        # put, so the result pipe is drained meanwhile. The drain runs in a daemon
        # thread: a producer that died in the middle of a write (OOM killer, SIGKILL)
        # leaves a partial message, and reading it would block forever; a drain stuck
        # on one is abandoned instead of hanging close() (seen once after training).
        done = threading.Event()
        drain = threading.Thread(target=self._drain_until, args=(done,), daemon=True,
                                 name="prefetch-drain")
        drain.start()
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in self._procs) and time.monotonic() < deadline:
            for p in self._procs:
                p.join(timeout=_POLL / len(self._procs))
        done.set()
        drain.join(timeout=2 * _POLL)
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=2.0)
            if p.is_alive():  # pragma: no cover - SIGTERM ignored: last resort
                p.kill()
                p.join(timeout=2.0)
        # No drain here: a producer terminated in the middle of a put leaves a partial
        # message in the pipe, and reading it would block forever (seen in CI).
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()
        self._pending.clear()

    def _drain_until(self, done: threading.Event) -> None:
        while not done.is_set():
            try:
                self._results.get(timeout=_POLL)
            except queue.Empty:
                continue
            except (OSError, ValueError, EOFError):
                return

    @property
    def processes(self) -> list[Any]:
        return list(self._procs)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - belt and braces
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001
            pass
