"""The zarr heatmap store: layout, resumability, refusal of foreign stores, atomic
finalisation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsi_detect.engine.heatmap import (
    HeatmapStore,
    HeatmapStoreError,
    open_heatmap,
    open_run_store,
)
from napari_wsi_detect.engine.plan import MapGeometry, plan_rois


@pytest.fixture()
def setup():
    g = MapGeometry.for_slide((700, 900), 0.25, 0.25, alpha=2)  # 44 x 57 cells
    return g, plan_rois((700, 900), g, 10)  # 5 x 6 ROIs, edge ones smaller


def test_tiles_land_in_whole_chunks_and_reopen(tmp_path, setup):
    g, rois = setup
    path = tmp_path / "h.zarr"
    store = HeatmapStore.create(path, g, 10, "m", {"alpha": 2})
    assert store.prob.chunks == (10, 10) and store.computed.shape == (5, 6)
    assert np.isnan(store.to_numpy()).all()
    edge = rois[-1]
    tile = np.full((edge.rows, edge.cols), 0.25, np.float32)
    store.write_tile(edge.r0, edge.c0, tile)
    again = open_heatmap(path)
    assert again.geometry == g and again.model_name == "m" and again.params == {"alpha": 2}
    assert again.is_computed(edge) and not again.is_computed(rois[0])
    m = again.to_numpy()
    assert (m[40:, 50:] == 0.25).all() and np.isnan(m[:40]).all()
    assert again.pending(rois) == rois[:-1]
    with pytest.raises(HeatmapStoreError, match="ROI grid"):
        store.write_tile(3, 0, tile)


def test_resume_matches_and_foreign_store_is_refused(tmp_path, setup):
    g, rois = setup
    path = tmp_path / "h.zarr"
    s = HeatmapStore.create(path, g, 10, "model-a", {"alpha": 2})
    s.write_tile(0, 0, np.ones((10, 10), np.float32))
    resumed = HeatmapStore.create(path, g, 10, "model-a", {"alpha": 2})
    assert len(resumed.pending(rois)) == len(rois) - 1
    with pytest.raises(HeatmapStoreError, match="different model"):
        HeatmapStore.create(path, g, 10, "model-b", {"alpha": 2})
    with pytest.raises(HeatmapStoreError, match="different roi_cells"):
        HeatmapStore.create(path, g, 20, "model-a", {"alpha": 2})
    g4 = MapGeometry.for_slide((700, 900), 0.25, 0.25, alpha=4)
    with pytest.raises(HeatmapStoreError, match="different geometry"):
        HeatmapStore.create(path, g4, 10, "model-a", {"alpha": 4})
    fresh = HeatmapStore.create(path, g, 10, "model-b", {}, overwrite=True)
    assert len(fresh.pending(rois)) == len(rois)


def test_run_folder_partial_then_final(tmp_path, setup):
    g, rois = setup
    store = open_run_store(tmp_path, g, 10, "m", {})
    assert store.path == tmp_path / "heatmap.zarr.partial"
    for roi in rois:
        store.write_tile(roi.r0, roi.c0, np.zeros((roi.rows, roi.cols), np.float32))
    final = store.finalise()
    assert final.path == tmp_path / "heatmap.zarr" and final.complete
    assert not (tmp_path / "heatmap.zarr.partial").exists()
    assert open_heatmap(tmp_path).complete  # the run folder works too
    # A new run into the same folder resumes the finished store (nothing left to do) ...
    again = open_run_store(tmp_path, g, 10, "m", {})
    assert again.pending(rois) == [] and again.path.name == "heatmap.zarr.partial"
    again.finalise()
    # ... and a different model is refused, unless overwriting.
    with pytest.raises(HeatmapStoreError):
        open_run_store(tmp_path, g, 10, "other", {})
    assert len(open_run_store(tmp_path, g, 10, "other", {}, overwrite=True).pending(rois)) == 30


def test_not_a_heatmap(tmp_path):
    with pytest.raises(HeatmapStoreError):
        open_heatmap(tmp_path / "missing.zarr")
    (tmp_path / "x").mkdir()
    with pytest.raises(HeatmapStoreError):
        open_heatmap(tmp_path / "x")


def test_in_memory_store_copies_to_disk(tmp_path, setup):
    g, rois = setup
    mem = HeatmapStore.create(None, g, 10, "m", {})
    mem.write_tile(0, 0, np.full((10, 10), 0.5, np.float32))
    disk = mem.copy_to(tmp_path / "heatmap.zarr")
    assert disk.path == tmp_path / "heatmap.zarr"
    assert disk.to_numpy()[0, 0] == 0.5 and disk.is_computed(rois[0])
