"""A run folder begun at another ROI size (before the CPU default changed, say) is
resumed by a run that leaves the ROI size to the default, not refused."""

from __future__ import annotations

import threading

import pytest

from napari_wsi_detect.api import detect_metastases
from napari_wsi_detect.errors import CancelledError

REGION = (1152, 768, 768, 768)  # a few small ROIs in the phantom's tissue at T = 24


@pytest.fixture(scope="module")
def tissue(phantom_small):
    from napari_wsi_detect.slide import open_slide
    from napari_wsi_detect.slide.tissue import compute_tissue_mask

    with open_slide(phantom_small) as slide:
        return compute_tissue_mask(slide, exclude_pen=False)


def test_default_roi_size_resumes_a_store_begun_at_another(tmp_path, phantom_small, tissue):
    out = tmp_path / "run"
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        detect_metastases(phantom_small, model="demo", device="cpu", out=out,
                          roi_cells=24, cancel=cancel, tissue_mask=tissue, region=REGION,
                          progress=lambda d, t, e: cancel.set() if d >= 2 else None)
    res = detect_metastases(phantom_small, model="demo", device="cpu", out=out,
                            tissue_mask=tissue, region=REGION)
    assert res.timings["rois_resumed"] >= 2
    assert res.parameters["roi_cells"] == 24
