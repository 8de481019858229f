"""Model files: safetensors + JSON round trip, and every way a model file can be wrong
ends in ModelFileError with a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_wsi_detect.errors import ModelFileError, WsiDetectError
from napari_wsi_detect.models import io as model_io
from napari_wsi_detect.models.device import resolve_device
from napari_wsi_detect.models.io import build_model, load_model, save_model
from napari_wsi_detect.models.scannet import ScanNetFCN

WIDTH = 1 / 16


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[ScanNetFCN, Path, Path]:
    torch.manual_seed(0)
    model = ScanNetFCN(width=WIDTH).eval()
    w, j = save_model(model, tmp_path / "mets", {"mpp": 0.5, "seed": 11,
                                                 "thresholds": {"probability": 0.6}})
    return model, w, j


def test_round_trip_gives_the_same_predictions(saved):
    model, weights, json_path = saved
    assert weights.name == "mets.safetensors" and json_path.name == "mets.json"
    x = torch.rand(1, 3, 276, 244)
    expected = model.predict_proba(x)
    for ref in (weights, json_path, json_path.parent, str(weights)):
        loaded, config = load_model(ref)
        assert not loaded.training
        assert torch.equal(loaded.predict_proba(x), expected)
    assert config["architecture"] == "scannet-fcn"
    assert config["width"] == WIDTH
    assert (config["patch"], config["stride"]) == (244, 32)
    assert config["mpp"] == 0.5 and config["seed"] == 11
    assert config["class_names"] == ["normal", "tumour"]
    # user thresholds merged over the defaults
    assert config["thresholds"]["probability"] == 0.6
    assert "opening_um" in config["thresholds"] and "min_area_um2" in config["thresholds"]


def test_save_leaves_no_temporary_files(saved):
    _, weights, _ = saved
    assert sorted(p.name for p in weights.parent.iterdir()) == ["mets.json", "mets.safetensors"]


def test_resave_of_loaded_config_round_trips(saved, tmp_path):
    model, weights, _ = saved
    loaded, config = load_model(weights)
    _, j2 = save_model(loaded, tmp_path / "copy" / "again.safetensors", config)
    again = json.loads(j2.read_text())
    assert not any(k.startswith("_") for k in again)
    assert again["weights"] == "again.safetensors"
    load_model(j2)


def test_config_contradicting_the_network_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="width"):
        save_model(ScanNetFCN(width=WIDTH), tmp_path / "m", {"width": 1.0})


def test_wrong_width_names_tensor_and_shapes(saved):
    _, weights, json_path = saved
    config = json.loads(json_path.read_text())
    config["width"] = 1 / 8
    config.pop("weights_sha256")
    json_path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError) as info:
        load_model(json_path)
    msg = str(info.value)
    assert "features.0.weight" in msg
    assert "(4, 3, 3, 3)" in msg and "(8, 3, 3, 3)" in msg  # found vs expected


def test_missing_tensor_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, weights, json_path = saved
    state = load_file(str(weights))
    del state["head.6.bias"]
    save_file(state, str(weights))
    config = json.loads(json_path.read_text())
    config.pop("weights_sha256")
    json_path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"missing tensors \['head.6.bias'\]"):
        load_model(weights)


def test_swapped_weights_file_is_caught_by_checksum(saved, tmp_path):
    _, weights, json_path = saved
    torch.manual_seed(99)
    save_model(ScanNetFCN(width=WIDTH), tmp_path / "other")
    (tmp_path / "other.safetensors").replace(weights)
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(json_path)


def test_corrupt_json(saved):
    _, weights, json_path = saved
    json_path.write_text('{"architecture": "scannet-fcn", ')
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(weights)


def test_corrupt_weights(saved):
    _, weights, json_path = saved
    weights.write_bytes(b"\x00garbage" * 10)
    config = json.loads(json_path.read_text())
    config.pop("weights_sha256")
    json_path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(json_path)


def test_unknown_architecture(saved):
    _, _, json_path = saved
    config = json.loads(json_path.read_text())
    config["architecture"] = "resnet-9000"
    json_path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="resnet-9000.*scannet-fcn"):
        load_model(json_path)


def test_pickle_files_are_refused(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not opened")
    with pytest.raises(ModelFileError, match="pickles are refused"):
        load_model(pt)


def test_missing_files(tmp_path, saved):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    _, weights, json_path = saved
    weights.unlink()
    with pytest.raises(ModelFileError, match="weights file .* is missing"):
        load_model(json_path)


def test_folder_with_two_configs_is_ambiguous(saved, tmp_path):
    save_model(ScanNetFCN(width=WIDTH), tmp_path / "second")
    with pytest.raises(ModelFileError, match="exactly one"):
        load_model(tmp_path)


def test_demo_absent_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(model_io, "BUNDLED_DIR", tmp_path)
    with pytest.raises(ModelFileError, match="demo model has not been built"):
        load_model("demo")


def test_bundled_name_is_found(monkeypatch, tmp_path):
    save_model(ScanNetFCN(width=WIDTH), tmp_path / "demo")
    monkeypatch.setattr(model_io, "BUNDLED_DIR", tmp_path)
    model, config = load_model("demo")
    assert isinstance(model, ScanNetFCN) and config["width"] == WIDTH


def test_registry_accepts_new_architectures(monkeypatch):
    monkeypatch.setitem(model_io.ARCHITECTURES, "tiny", lambda c: torch.nn.Conv2d(3, c["k"], 1))
    assert build_model({"architecture": "tiny", "k": 5}).out_channels == 5


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        assert resolve_device("auto").type != "cuda"
        with pytest.raises(WsiDetectError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(WsiDetectError, match="unknown device"):
        resolve_device("tpu")
