"""The CUDA path of the runner, checked without a GPU: pinned host memory only for CUDA,
TF32 off around every exact forward (and put back), the CUDA default sizes. On a machine
with a GPU the last test also runs a real CUDA batch (scripts/gpu_check.sh runs it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_wsi_detect.detectors import get_detector
from napari_wsi_detect.detectors.job import prepare_run
from napari_wsi_detect.engine.plan import MapGeometry, default_roi_cells, plan_rois
from napari_wsi_detect.engine.run import HeatmapRunner, host_batch, run_heatmap, stitch
from napari_wsi_detect.engine.testing import ArraySlide, BoxModel
from napari_wsi_detect.models.device import _tf32_flags, fp32_exact


def _flag_values() -> list[object]:
    return [getattr(obj, name) for obj, name, _ in _tf32_flags()]


def _case() -> tuple[ArraySlide, MapGeometry, list]:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, size=(400, 500, 3), dtype=np.uint8)
    g = MapGeometry.for_slide((400, 500), 0.25, 0.25, alpha=2)
    return ArraySlide(rgb, mpp=0.25), g, plan_rois((400, 500), g, 8)


def test_pinned_host_memory_is_requested_only_for_cuda():
    slide, g, rois = _case()
    assert HeatmapRunner(slide, BoxModel(16), g, rois, device="cuda").pin_memory
    assert HeatmapRunner(slide, BoxModel(16), g, rois, device="cuda:1").pin_memory
    for dev in ("cpu", "mps", torch.device("cpu")):
        assert not HeatmapRunner(slide, BoxModel(16), g, rois, device=dev).pin_memory
    # A CPU run never pins (pinning without CUDA is an error on CPU-only builds).
    seen = []

    def model(x):
        seen.append(x.device.type)
        return BoxModel(16)(x)

    list(run_heatmap(slide, model, g, rois[:3], batch_size=2))
    assert seen == ["cpu", "cpu"]


def test_host_batch_is_one_nhwc_copy_padded_white():
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    edge = rng.integers(0, 256, (12, 30, 4), dtype=np.uint8)  # RGBA edge ROI
    out = host_batch([full, edge])
    assert out.dtype == torch.uint8 and tuple(out.shape) == (2, 20, 30, 3)
    assert not out.is_pinned()
    a = out.numpy()
    np.testing.assert_array_equal(a[0], full)
    np.testing.assert_array_equal(a[1, :12], edge[..., :3])
    assert (a[1, 12:] == 255).all()
    v = int(a[0, 0, 0, 0])
    full[0, 0, 0] = (v + 1) % 256  # a copy, not a view of the reader's array
    assert int(out.numpy()[0, 0, 0, 0]) == v


def test_fp32_exact_turns_tf32_off_on_cuda_and_puts_it_back():
    before = _flag_values()
    off = [value for _, _, value in _tf32_flags()]
    with fp32_exact("cuda"):
        assert _flag_values() == off
    assert _flag_values() == before
    with pytest.raises(RuntimeError), fp32_exact(torch.device("cuda:0")):
        assert _flag_values() == off
        raise RuntimeError("model crash")
    assert _flag_values() == before  # restored on error too
    with fp32_exact("cpu"):
        assert _flag_values() == before  # CPU: nothing touched


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_an_exact_cuda_run_forwards_with_tf32_off(monkeypatch, allow_tf32):
    """The runner on device 'cuda' with the host->device step kept on the CPU (no GPU
    here): the model sees TF32 off during every forward unless allow_tf32, and the
    process's flags are the same after the run as before."""
    slide, g, rois = _case()
    original = HeatmapRunner._to_tensor

    def on_host(self, images):
        return original(dataclasses.replace(self, device="cpu"), images)

    monkeypatch.setattr(HeatmapRunner, "_to_tensor", on_host)
    before = _flag_values()
    off = [value for _, _, value in _tf32_flags()]
    during = []

    def model(x):
        during.append(_flag_values())
        return BoxModel(16)(x)

    runner = HeatmapRunner(slide, model, g, rois, device="cuda", batch_size=2,
                           allow_tf32=allow_tf32)
    tiles = list(runner)
    assert len(tiles) == len(rois) and during
    assert all(v == (before if allow_tf32 else off) for v in during)
    assert _flag_values() == before
    stats = runner.stats.to_dict()
    assert stats["net_s"] > 0 and stats["tensor_s"] > 0
    assert stats["model_s"] == pytest.approx(stats["net_s"] + stats["tensor_s"], abs=2e-4)


def test_cuda_default_sizes():
    """The paper's 2884 px ROIs (alpha = 2) and batches of 2 on CUDA; the CPU default
    ROI is 1892 px (see docs/engine.md: a 4x larger ROI wastes less on the halo)."""
    g = MapGeometry.for_slide((4000, 4000), 0.243, 0.243, alpha=2)
    assert g.read_size(default_roi_cells("cuda", 2)) == 2884
    assert g.read_size(default_roi_cells("cpu", 2)) == 1892
    detector = get_detector("metastases")
    slide = ArraySlide(np.full((4000, 4000, 3), 128, np.uint8), mpp=0.243)
    config = {"architecture": "scannet-fcn", "width": 0.0625, "mpp": 0.243}
    from napari_wsi_detect.models.scannet import ScanNetFCN

    net = ScanNetFCN(width=0.0625)
    for dev, cells, batch in (("cuda", 166, 2), ("cpu", 104, 1)):
        prep = prepare_run(detector, slide, net, config, options={"alpha": 2},
                           device=torch.device(dev))
        assert (prep.roi_cells, prep.batch_size) == (cells, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_cuda_run_matches_the_cpu_run():
    slide, g, rois = _case()
    cpu = stitch(run_heatmap(slide, BoxModel(16), g, rois), g)
    runner = HeatmapRunner(slide, BoxModel(16).cuda(), g, rois, device="cuda", batch_size=3)
    assert runner.pin_memory
    np.testing.assert_allclose(stitch(iter(runner), g), cpu, atol=1e-6)
