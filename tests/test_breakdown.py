"""bench wholeslide --breakdown: the extrapolation arithmetic, and a smoke run on a small
phantom whose two ROI sizes (the former and the present CPU default scaled down) must give
the same map and the same regions: the ROI size is a speed choice, never a result."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_wsi_detect.benchmarks import breakdown, wholeslide


def test_extrapolation_scales_tiles_by_tissue_and_the_rest_by_area():
    row = {"tissue_mpx": 100.0, "slide_mpx": 400.0, "open": (0.5, 0.1),
           "tiles": (50.0, 90.0), "tissue": (1.0, 0.5), "finish": (2.0, 1.5)}
    got = breakdown.extrapolate(row)
    assert got["target_tissue_mpx"] == pytest.approx(3200.0)
    # 3200 / 100 = 32 x the tiles; 8000 / 400 = 20 x tissue mask + finish; open once.
    assert got["wall_s"] == pytest.approx(50 * 32 + 3.0 * 20 + 0.5)
    assert got["cpu_s"] == pytest.approx(90 * 32 + 2.0 * 20 + 0.1)


@pytest.mark.slow
def test_breakdown_smoke_two_roi_sizes_same_map(tmp_path, capsys):
    from napari_wsi_detect.engine.heatmap import open_heatmap
    from napari_wsi_detect.phantom import write_phantom

    slide = tmp_path / "p.tif"
    write_phantom(slide, seed=3, size=(2048, 1536), mpp=0.243)
    parser = argparse.ArgumentParser()
    wholeslide.add_arguments(parser)
    json_path = tmp_path / "b.json"
    args = parser.parse_args(["--breakdown", str(slide), "--compare-roi-cells", "12", "24",
                              "--device", "cpu", "--work", str(tmp_path / "w"),
                              "--json", str(json_path)])
    assert wholeslide.run(args) == 0
    out = capsys.readouterr().out
    assert "network (+ copy back)" in out and "100k x 80k" in out
    import json

    rows = json.loads(json_path.read_text())
    assert [r["roi_cells"] for r in rows] == [12, 24]
    for r in rows:
        assert r["net"] > 0 and r["tiles"][0] >= r["net"]
        assert 0 <= r["io_wait_fraction"] <= 1 and r["tissue_mpx"] > 0
    assert rows[0]["rois"] > rows[1]["rois"]
    assert rows[0]["tissue_mpx"] == pytest.approx(rows[1]["tissue_mpx"], rel=0.02)
    assert rows[0]["regions"] == rows[1]["regions"]
    maps = [open_heatmap(tmp_path / "w" / f"run-T{t}-fp32").to_numpy() for t in (12, 24)]
    both = np.isfinite(maps[0]) & np.isfinite(maps[1])
    assert both.sum() > 0.5 * np.isfinite(maps[0]).sum()
    np.testing.assert_allclose(maps[0][both], maps[1][both], atol=1e-5)
