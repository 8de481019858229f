"""Prefetching producers: order, completeness, bounded queue, error surfacing, shutdown.

The sources live in this module; spawned producers import it by name (pytest puts
tests/ on sys.path, which the spawn context hands to the children)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from napari_wsi_detect.training.prefetch import Prefetcher, ProducerError


class StepSource:
    """Batch k = (k, producer pid, a small array depending on k)."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.delay = delay
        self.fail_at = fail_at

    def open(self) -> None:
        self.pid = os.getpid()

    def make_batch(self, step: int):
        if step == self.fail_at:
            raise OSError("cannot read tile 12 of slide tumor_042.tif: truncated file")
        time.sleep(self.delay)
        return step, self.pid, np.full(4, step, np.int64)

    def close(self) -> None:
        pass


def _all_dead(procs) -> bool:
    return all(not p.is_alive() for p in procs)


def test_two_producers_deliver_every_step_in_order():
    with Prefetcher(StepSource(delay=0.005), n_producers=2, queue_size=3, start_step=5) as pf:
        got = [pf.get() for _ in range(30)]
        procs = pf.processes
    assert [g[0] for g in got] == list(range(5, 35))
    assert all((g[2] == g[0]).all() for g in got)
    assert {g[1] for g in got} <= {p.pid for p in procs} and os.getpid() not in {g[1] for g in got}
    assert _all_dead(procs)


def test_queue_is_bounded_when_the_consumer_is_slow():
    with Prefetcher(StepSource(), n_producers=2, queue_size=3) as pf:
        time.sleep(1.5)  # the loop is "training": nothing consumed
        ahead = pf.produced.value
        assert 3 <= ahead <= 3 + 2  # queue_size waiting + one in each producer's hands
        assert pf.get()[0] == 0
        procs = pf.processes
    assert _all_dead(procs)


def test_producer_error_reaches_the_consumer_and_no_process_survives():
    pf = Prefetcher(StepSource(fail_at=4), n_producers=2, queue_size=2)
    procs = pf.processes
    with pytest.raises(ProducerError, match=r"tumor_042\.tif: truncated file") as info:
        with pf:
            for _ in range(20):
                pf.get()
    assert "OSError" in str(info.value) and "make_batch" in str(info.value)  # traceback
    assert _all_dead(procs)
    assert all(p.exitcode is not None for p in procs)


def test_keyboard_interrupt_in_the_loop_shuts_producers_down():
    with pytest.raises(KeyboardInterrupt):
        with Prefetcher(StepSource(delay=0.01), n_producers=2, queue_size=4) as pf:
            procs = pf.processes
            pf.get()
            raise KeyboardInterrupt
    assert _all_dead(procs)


def test_zero_producers_is_synchronous_and_identical():
    with Prefetcher(StepSource(), n_producers=0, start_step=2) as pf:
        got = [pf.get() for _ in range(3)]
        assert pf.processes == []
    assert [g[0] for g in got] == [2, 3, 4] and {g[1] for g in got} == {os.getpid()}


def test_a_killed_producer_is_reported_not_waited_for():
    with pytest.raises(ProducerError, match="stopped"):
        with Prefetcher(StepSource(delay=0.05), n_producers=1, queue_size=2) as pf:
            procs = pf.processes
            pf.get()
            procs[0].kill()
            procs[0].join(5)
            for _ in range(50):
                pf.get()
    assert _all_dead(procs)


def test_close_returns_when_a_dead_producer_left_half_a_message_in_the_pipe():
    """A producer killed in the middle of a write (the OOM killer) leaves a partial
    message: close() must not block forever reading it (seen once after training)."""
    import struct
    import threading

    pf = Prefetcher(StepSource(), n_producers=1, queue_size=2)
    assert pf.get()[0] == 0
    # The header announces 1 MB, 10 bytes follow, and no writer will send the rest.
    os.write(pf._results._writer.fileno(), struct.pack("!i", 1 << 20) + b"x" * 10)
    procs = pf.processes
    closer = threading.Thread(target=pf.close, kwargs={"timeout": 2.0}, daemon=True)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive(), "close() hung on a partial message"
    assert _all_dead(procs)
