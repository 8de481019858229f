"""Streaming runner: prefetching, bounded memory, cancellation, crash + resume."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_wsi_detect.engine.heatmap import HeatmapStore, open_heatmap
from napari_wsi_detect.engine.plan import MapGeometry, plan_rois
from napari_wsi_detect.engine.run import HeatmapRunner, Normalisation, run_heatmap, stitch
from napari_wsi_detect.engine.testing import ArraySlide, BoxModel
from napari_wsi_detect.errors import CancelledError, SlideReadError


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(600, 760, 3), dtype=np.uint8)
    g = MapGeometry.for_slide((600, 760), 0.25, 0.25, alpha=2)
    rois = plan_rois((600, 760), g, 8)  # 38 x 48 cells -> 5 x 6 = 30 ROIs
    slide = ArraySlide(rgb, mpp=0.25)
    full = stitch(run_heatmap(slide, BoxModel(16), g, rois), g)
    return slide, g, rois, full


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wsi-detect-reader")]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_cancel_stops_within_one_batch_and_resume_gives_the_same_map(tmp_path, case, batch_size):
    slide, g, rois, full = case
    store = HeatmapStore.create(tmp_path / "h.zarr", g, 8, "box", {})
    cancel = threading.Event()
    seen = []

    def progress(done, total, eta):
        seen.append(done)
        if done == 5:
            cancel.set()

    runner = HeatmapRunner(slide, BoxModel(16), g, rois, batch_size=batch_size, store=store,
                           progress_cb=progress, cancel_event=cancel, n_readers=3)
    with pytest.raises(CancelledError, match="cancelled after"):
        for _ in runner:
            pass
    # The tiles of the batch in flight when cancel was set may finish; nothing more.
    assert 5 <= runner.stats.done <= 5 + batch_size - 1 + 1
    assert runner.stats.cancelled and _reader_threads() == []
    reopened = open_heatmap(tmp_path / "h.zarr", mode="r+")
    todo = reopened.pending(rois)
    assert len(todo) == len(rois) - runner.stats.done
    tiles = list(run_heatmap(slide, BoxModel(16), g, todo, store=reopened))
    assert len(tiles) == len(todo) and tiles[-1].done == tiles[-1].total == len(todo)
    np.testing.assert_array_equal(reopened.to_numpy(), full)


class Crashing(BoxModel):
    def __init__(self, crash_at: int) -> None:
        super().__init__(16)
        self.crash_at = crash_at

    def forward(self, x):
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash in the model")
        return super().forward(x)


def test_crash_leaves_a_store_that_reopens_and_resumes(tmp_path, case):
    slide, g, rois, full = case
    path = tmp_path / "h.zarr"
    store = HeatmapStore.create(path, g, 8, "box", {})
    with pytest.raises(RuntimeError, match="simulated"):
        for _ in run_heatmap(slide, Crashing(crash_at=7), g, rois, store=store):
            pass
    assert _reader_threads() == []
    reopened = HeatmapStore.create(path, g, 8, "box", {})  # what a re-run does
    todo = reopened.pending(rois)
    assert len(todo) == len(rois) - 7
    for _ in run_heatmap(slide, BoxModel(16), g, todo, store=reopened, batch_size=2):
        pass
    np.testing.assert_array_equal(reopened.to_numpy(), full)


def test_prefetch_is_bounded_and_io_wait_is_measured(case):
    slide, g, rois, full = case
    outstanding = []
    lock = threading.Lock()
    state = {"read": 0, "done": 0}

    def reader(s, geometry, roi):
        from napari_wsi_detect.engine.reader import read_roi

        with lock:
            state["read"] += 1
            outstanding.append(state["read"] - state["done"])
        return read_roi(s, geometry, roi)

    def progress(done, total, eta):
        with lock:
            state["done"] = done
        assert eta is not None and eta >= 0

    runner = HeatmapRunner(slide, BoxModel(16), g, rois, batch_size=2, progress_cb=progress,
                           n_readers=2, reader=reader)
    out = stitch(iter(runner), g)
    np.testing.assert_array_equal(out, full)
    # queue (2 x batch) + one ROI in each reader + the batch being assembled/run
    assert max(outstanding) <= 2 * 2 + 2 + 2 + 1
    assert 0.0 <= runner.stats.io_wait_fraction <= 1.0
    assert runner.stats.done == len(rois)


def test_reader_failure_surfaces_and_threads_stop(case):
    slide, g, rois, _ = case

    def broken(s, geometry, roi):
        if roi.index == 3:
            raise SlideReadError("tile 3 is corrupt")
        return np.full((roi.read_h, roi.read_w, 3), 255, np.uint8)

    with pytest.raises(SlideReadError, match="corrupt"):
        list(HeatmapRunner(slide, BoxModel(16), g, rois, reader=broken))
    assert _reader_threads() == []


def test_abandoned_generator_shuts_readers_down(case):
    slide, g, rois, _ = case
    gen = run_heatmap(slide, BoxModel(16), g, rois)
    next(gen)
    gen.close()
    assert _reader_threads() == []


def test_normalisation_from_config():
    assert Normalisation.from_config({}) == Normalisation()
    n = Normalisation.from_config({"normalisation": {"mean": [0.5, 0.5, 0.5], "std": 0.25}})
    assert n.mean == (0.5, 0.5, 0.5) and n.std == (0.25, 0.25, 0.25)
    n255 = Normalisation.from_config({"mean": [127.5] * 3, "std": [63.75] * 3})
    assert n255.mean == pytest.approx((0.5,) * 3) and n255.std == pytest.approx((0.25,) * 3)
