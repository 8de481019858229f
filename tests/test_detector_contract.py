"""The contract every registered detector must pass (parametrised over the registry).

A new detector adds a small random-weight model factory to TEST_MODELS; the test
`test_every_registered_detector_has_a_test_model` fails until it does."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_wsi_detect.detectors import available, get_detector, tasks
from napari_wsi_detect.detectors.job import DetectionRequest, detect, detection_events
from napari_wsi_detect.engine.run import HeatmapTile
from napari_wsi_detect.errors import CancelledError, ModelFileError, WsiDetectError

REGION = (1024, 1024, 512, 512)


def _scannet(path, **extra):
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    torch.manual_seed(0)
    return save_model(ScanNetFCN(width=0.0625), path,
                      {"mpp": 0.243, "task": "metastases", **extra})[0]


def _segmitos(path, **extra):
    import torch

    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.segmitos import SegMitosFCN

    torch.manual_seed(0)
    return save_model(SegMitosFCN(width=0.0625), path,
                      {"mpp": 0.25, "task": "mitoses", **extra})[0]


def _h2g(path, **extra):
    import torch

    from napari_wsi_detect.models.h2g import H2GNet
    from napari_wsi_detect.models.io import save_model

    torch.manual_seed(0)
    # 32 px patches at 0.243 µm/px (the real model: 256 at ~1 µm/px) so that the 512 px
    # region spans several ROIs; a 64² refinement keeps the U-Net cheap.
    net = H2GNet(width=0.1, unet_width=2, refine_size=64, patch=32)
    return save_model(net, path, {"mpp": 0.243, "task": "tumour", **extra})[0]


TEST_MODELS = {"metastases": _scannet, "mitoses": _segmitos, "tumour": _h2g}
# ROI size in map cells for the contract runs: small, so the region spans many ROIs, but
# for SegMitos (8 px cells, a 192 px halo per ROI) 4 cells would read 13x the area it
# maps; 16 cells still give 16 ROIs over the region.
ROI_CELLS = {"mitoses": 16}


def test_every_registered_detector_has_a_test_model() -> None:
    assert set(tasks()) <= set(TEST_MODELS), "add a test model factory for the new detector"


@pytest.fixture(scope="module", params=tasks())
def case(request, tmp_path_factory):
    task = request.param
    model = TEST_MODELS[task](tmp_path_factory.mktemp(task) / "model")
    return get_detector(task), str(model)


def _request(det, slide, model, **kw) -> DetectionRequest:
    base = dict(task=det.task, slide=str(slide), model=model, device="cpu", region=REGION,
                roi_cells=ROI_CELLS.get(det.task, 4), use_tissue=False)
    base.update(kw)
    return DetectionRequest(**base)


def test_schema_is_complete(case) -> None:
    det, _ = case
    keys = [p.key for p in det.all_params()]
    assert len(keys) == len(set(keys))
    for p in det.all_params():
        assert p.help and p.label and p.stage in ("run", "post")
        assert p.validate(p.default) == p.default
        with pytest.raises(WsiDetectError, match=p.key):
            p.validate("not-a-choice" if p.named else p.maximum + 1 if not p.choices
                       else max(p.choices) + 1)
        with pytest.raises(WsiDetectError):
            p.validate("abc")


def test_plan_covers_the_requested_region(case, phantom_small) -> None:
    from napari_wsi_detect.detectors.job import load_checked_model, prepare_run
    from napari_wsi_detect.slide import open_slide

    det, model = case
    with open_slide(phantom_small) as slide:
        net, config = load_checked_model(det, model, "cpu")
        prep = prepare_run(det, slide, net, config, options=det.resolve_options(), device="cpu",
                           region=REGION, roi_cells=ROI_CELLS.get(det.task, 4))
    g = prep.geometry
    covered = np.zeros((REGION[3], REGION[2]), bool)
    for roi in prep.rois:
        x, y, w, h = g.cell_rect0(roi.r0, roi.c0, roi.rows, roi.cols)
        x0, y0 = int(max(x, REGION[0])), int(max(y, REGION[1]))
        x1 = int(min(x + w, REGION[0] + REGION[2]))
        y1 = int(min(y + h, REGION[1] + REGION[3]))
        if x1 > x0 and y1 > y0:
            covered[y0 - REGION[1]:y1 - REGION[1], x0 - REGION[0]:x1 - REGION[0]] = True
    assert covered.all()


def test_cancel_then_resume_gives_the_uninterrupted_store(case, phantom_small, tmp_path) -> None:
    det, model = case
    whole = detect(_request(det, phantom_small, model, out=str(tmp_path / "whole")))
    cancel = threading.Event()
    n = 0
    for ev in detection_events(_request(det, phantom_small, model, out=str(tmp_path / "cut")),
                               cancel):
        if isinstance(ev, HeatmapTile):
            n += 1
            if n == 2:
                cancel.set()
    assert (tmp_path / "cut" / "heatmap.zarr.partial").is_dir()
    assert not (tmp_path / "cut" / "summary.json").exists()  # nothing claims to be done
    resumed = detect(_request(det, phantom_small, model, out=str(tmp_path / "cut")))
    assert resumed.timings["rois_resumed"] >= 2
    assert np.array_equal(whole.heatmap, resumed.heatmap, equal_nan=True)
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["complete"] is True and summary["task"] == det.task


def test_cancel_through_the_api_raises_and_keeps_the_partial_store(case, phantom_small,
                                                                   tmp_path) -> None:
    det, model = case
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError, match="resume"):
        detect(_request(det, phantom_small, model, out=str(tmp_path / "r")), cancel)
    assert (tmp_path / "r" / "heatmap.zarr.partial").is_dir()


def test_postprocessing_never_runs_the_network(case, phantom_small, monkeypatch) -> None:
    from napari_wsi_detect.engine import run

    det, model = case
    result = detect(_request(det, phantom_small, model))

    def boom(*a, **k):
        raise AssertionError("the network ran during post-processing")

    monkeypatch.setattr(run.HeatmapRunner, "_run_batch", boom)
    monkeypatch.setattr(type(det), "forward", boom)
    for p in det.params:
        result.postprocess(**{p.key: p.minimum})
        assert result.parameters[p.key] == p.minimum
    assert isinstance(result.detections.items, list)


def test_outputs_are_written_atomically(case, phantom_small, tmp_path, monkeypatch) -> None:
    import napari_wsi_detect.annotations.geojson as geojson

    det, model = case
    out = tmp_path / "run"
    result = detect(_request(det, phantom_small, model, out=str(out)))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = geojson.write_geojson

    def half_then_fail(path, *a, **k):
        real(path.with_name("ignored.geojson"), *a, **k)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(geojson, "write_geojson", half_then_fail)
    with pytest.raises(OSError):
        result.write(out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()
             and p.name != "ignored.geojson"}
    assert after == before  # the previous result is untouched, no temporary left
    summary = json.loads((out / "summary.json").read_text())
    assert det.results_file in summary["outputs"]


def test_models_of_another_task_or_shape_are_refused(case, phantom_small, tmp_path) -> None:
    det, model = case
    base = json.loads(open(model.replace(".safetensors", ".json")).read())
    wrong_task = dict(base, task="not-" + det.task)
    (tmp_path / "m.safetensors").write_bytes(open(model, "rb").read())
    cfg_path = tmp_path / "m.json"
    cfg_path.write_text(json.dumps(dict(wrong_task, weights="m.safetensors")))
    with pytest.raises(ModelFileError, match="not-" + det.task):
        detect(_request(det, phantom_small, str(cfg_path)))
    cfg_path.write_text(json.dumps(dict(base, task=det.task, weights="m.safetensors",
                                        width=base.get("width", 1) * 2)))
    with pytest.raises(ModelFileError):
        detect(_request(det, phantom_small, str(cfg_path)))


def test_bad_values_fail_before_any_work(case, phantom_small, tmp_path) -> None:
    det, model = case
    p = det.params[0]
    with pytest.raises(WsiDetectError, match=p.key):
        detect(_request(det, phantom_small, model, params={p.key: p.maximum + 1},
                        out=str(tmp_path / "x")))
    with pytest.raises(WsiDetectError, match="unknown parameter"):
        detect(_request(det, phantom_small, model, params={"no_such_knob": 1}))
    assert not (tmp_path / "x").exists()


def test_two_runs_cannot_write_one_folder(case, phantom_small, tmp_path) -> None:
    from napari_wsi_detect.detectors.outdir import RunFolderLock

    det, model = case
    out = tmp_path / "busy"
    out.mkdir()
    with RunFolderLock(out):
        with pytest.raises(WsiDetectError, match="another run"):
            detect(_request(det, phantom_small, model, out=str(out)))
    detect(_request(det, phantom_small, model, out=str(out)))  # free again


def test_a_model_giving_nan_is_an_error_not_an_empty_result(case, phantom_small) -> None:
    import torch

    from napari_wsi_detect.models.io import load_model

    det, model = case
    net, config = load_model(model)
    with torch.no_grad():
        for prm in net.parameters():
            prm.fill_(float("nan"))
    with pytest.raises(ModelFileError, match="non-finite"):
        detect(_request(det, phantom_small, "in-memory"), model=(net, config))


def test_registry_lists_every_detector_once() -> None:
    dets = available()
    assert [d.task for d in dets] == tasks()
    with pytest.raises(WsiDetectError, match="unknown task"):
        get_detector("no-such-task")
