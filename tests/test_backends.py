"""Inference backends (models/backends.py): every backend installed here computes the fp32
map within its documented tolerance, on a non-square input and on a smaller edge-ROI
shape, for the anchor-layer network (its dilations and stride-1 pools must survive the
export) and for the SegMitos and H2G-Net forwards; "auto" follows its rule; a missing
package is a clear error. The fp32 backend is the reference and is itself checked
against patch-wise classification. Speed is in `wsi-detect bench backends`, not here."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.models import backends as bk
from napari_wsi_detect.models.anchor import densify, patchwise
from napari_wsi_detect.models.scannet import ScanNetFCN

# torch.compile's first call takes ~1 min here: it is measured by the bench, not tested
# (it runs torch's own graph, no export of ours to check).
FAST = [b for b in bk.BACKENDS if b != "compile"]
# α = 2 map cells every 16 px: non-square, and an edge ROI (fewer cells, odd shape)
FULL, EDGE = (1, 3, 244 + 16 * 6, 244 + 16 * 9), (2, 3, 244 + 16 * 3 + 7, 244 + 16 * 5)


def _needs(backend: str) -> None:
    missing = bk.missing_packages(backend)
    if missing:
        pytest.skip(f"{backend} needs {', '.join(missing)} (pip install "
                    "'napari-wsi-detect[speed]')")
    if backend in ("bf16", "openvino-bf16") and not bk.native_bf16():
        pytest.skip(f"{backend}: this CPU has no native bf16 (avx512_bf16/amx)")


def _image(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    low = torch.randn(n, c, h // 16 + 2, w // 16 + 2, generator=g)
    smooth = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return smooth + 0.2 * torch.randn(n, c, h, w, generator=g)


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    torch.manual_seed(0)
    model = ScanNetFCN(width=0.0625).eval()
    with torch.no_grad():  # spread the logits: probabilities across (0, 1), not ~0.5
        model.head[-1].weight.mul_(8.0)
    return densify(model, 2)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WSI_DETECT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_fp32_backend_is_the_exact_path_and_equals_patchwise(dense) -> None:
    x = _image(FULL)
    assert bk.apply_backend(dense, "fp32") is dense
    with torch.inference_mode():
        p = dense(x)
        ref = patchwise(dense.base, x, stride=16)
    assert p.shape == ref.shape == (1, 7, 10)
    assert (p - ref).abs().max().item() < 1e-5
    assert p.std().item() > 0.05  # spread over (0, 1): a wrong map could not pass


@pytest.fixture(scope="module")
def bundled() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The bundled metastasis model at α = 2 and phantom tissue at FULL and EDGE sizes,
    normalised as the runner does: reduced precision is judged where its tolerance was
    measured (a random network with spread logits amplifies rounding ~5×)."""
    from napari_wsi_detect.engine.run import Normalisation
    from napari_wsi_detect.models.io import load_model
    from napari_wsi_detect.phantom import render_phantom_region

    net, config = load_model("demo", torch.device("cpu"))
    norm = Normalisation.from_config(config)
    # around an isolated tumour cell cluster of the demo phantom: tumour, its edge, normal
    rgb = render_phantom_region(700, 4300, 600, 500, seed=9001, size=(8192, 8192))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)
    inputs = [x[..., :FULL[2], :FULL[3]],
              torch.cat([x[..., :EDGE[2], :EDGE[3]], x[..., -EDGE[2]:, -EDGE[3]:]])]
    return densify(net.eval(), 2), inputs


@pytest.mark.parametrize("backend", FAST[1:])
def test_each_backend_matches_fp32_within_its_tolerance(dense, bundled, backend) -> None:
    _needs(backend)
    exact = backend in ("onnxruntime", "openvino")  # float32 engines: geometry, not rounding
    net, inputs = (dense, [_image(FULL), _image(EDGE)]) if exact else bundled
    fwd = bk.apply_backend(net, backend)
    assert fwd is not net and fwd.alpha == 2
    for x in inputs:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref, got = net(x), fwd(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert ref.std().item() > 0.01  # a map with contrast: a wrong one could not pass
        err = (got - ref).abs().max().item()
        assert err <= bk.TOLERANCE[backend], (backend, tuple(x.shape), err)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_segmitos_and_h2g_forwards_survive_export(backend) -> None:
    _needs(backend)
    from napari_wsi_detect.detectors.tumour import PatchForward
    from napari_wsi_detect.models.h2g import H2GNet
    from napari_wsi_detect.models.segmitos import HALO, SegMitosFCN, TiledForward

    torch.manual_seed(0)
    tiled = TiledForward(SegMitosFCN(width=0.0625).eval())
    patch = PatchForward(H2GNet(width=0.25).eval(), 64, (0.5,) * 3, (0.25,) * 3)
    cases = [(tiled, (1, 3, 2 * HALO + 8 * 12, 2 * HALO + 8 * 20)),
             (tiled, (1, 3, 2 * HALO + 8 * 4, 2 * HALO + 8 * 7)),
             (patch, (1, 3, 64 * 3, 64 * 2))]
    for fwd, shape in cases:
        x = _image(shape, seed=2)
        with torch.inference_mode():
            ref, got = fwd(x), bk.apply_backend(fwd, backend)(x)
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() < 1e-4, (type(fwd).__name__, shape)


def test_exports_are_cached_by_weights(dense, tmp_path) -> None:
    pytest.importorskip("onnx")
    core = dense.core_module()
    a = bk.export_onnx(core, "anchor-a2", (1, 3, 276, 308), tmp_path)
    assert a.is_file() and a.parent == tmp_path
    assert bk.export_onnx(core, "anchor-a2", (1, 3, 276, 308), tmp_path) == a
    other = densify(ScanNetFCN(width=0.0625).eval(), 2).core_module()  # new random weights
    assert bk.export_onnx(other, "anchor-a2", (1, 3, 276, 308), tmp_path) != a
    assert not list(tmp_path.glob("*.tmp*"))  # atomic: no temporaries left


def test_auto_follows_the_rule(monkeypatch) -> None:
    installed = {"onnx", "onnxruntime", "openvino"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in installed else None)
    monkeypatch.setattr(bk, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    # bf16 is faster but 1.5e-2 off over the whole metastasis map: never auto
    assert bk.resolve_backend("auto", "cpu", "metastases") == "openvino"
    assert bk.resolve_backend("auto", "cpu", "mitoses") == "openvino"
    assert bk.resolve_backend("auto", "cpu", "tumour") == "onnxruntime"
    assert bk.resolve_backend("auto", "cpu", "some-new-task") == "fp32"
    assert all(b not in bk.TOLERANCE or bk.TOLERANCE[b] <= bk.AUTO_TOLERANCE
               for order in bk.AUTO_ORDER.values() for b in order)
    installed.discard("openvino")
    assert bk.resolve_backend("auto", "cpu", "metastases") == "onnxruntime"
    assert bk.available_backends("cpu") == ["fp32", "bf16", "compile", "onnxruntime",
                                            "onnxruntime-int8"]
    monkeypatch.setattr(bk, "cpu_flags", lambda: {"avx2"})  # bf16 would be emulated
    assert "bf16" not in bk.available_backends("cpu")
    installed.clear()  # nothing optional installed: torch only
    assert bk.resolve_backend("auto", "cpu", "metastases") == "fp32"
    assert bk.resolve_backend("bf16", "cpu") == "bf16"  # asked for by name: given


def test_missing_package_is_a_clear_error(monkeypatch, dense) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(bk, "cpu_flags", lambda: set())
    with pytest.raises(WsiDetectError, match=r"pip install onnx openvino"):
        bk.apply_backend(dense, "openvino")
    with pytest.raises(WsiDetectError, match="unknown backend 'tensorrt'"):
        bk.resolve_backend("tensorrt")
    assert bk.apply_backend(dense, "auto") is dense  # auto never needs what is missing


def test_a_bf16_map_is_not_resumed_into_an_fp32_store(tmp_path) -> None:
    from napari_wsi_detect.detectors import get_detector
    from napari_wsi_detect.detectors.job import run_fingerprint

    det = get_detector("metastases")
    config = {"weights_sha256": "x", "architecture": "scannet-fcn", "width": 0.125}
    options = det.resolve_options({})
    exact = run_fingerprint(det, config, options, {}, "fp32")
    assert "backend" not in exact  # old fp32 stores keep resuming
    assert run_fingerprint(det, config, options, {}, "bf16")["backend"] == "bf16"
    assert run_fingerprint(det, config, options, {}, "bf16") != exact


def test_the_job_records_the_backend_and_keeps_stores_apart(phantom_small, tmp_path) -> None:
    _needs("onnxruntime")
    import json

    from napari_wsi_detect.api import detect_metastases
    from napari_wsi_detect.models.io import save_model

    torch.manual_seed(0)
    weights, _ = save_model(ScanNetFCN(width=0.0625), tmp_path / "tiny",
                            {"mpp": 0.243, "task": "metastases"})
    run = dict(model=str(weights), device="cpu", region=(1024, 1024, 512, 384),
               roi_cells=8, use_tissue=False)
    exact = detect_metastases(phantom_small, out=tmp_path / "a", **run)
    fast = detect_metastases(phantom_small, out=tmp_path / "b", backend="onnxruntime", **run)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["parameters"]["backend"] == {"requested": "onnxruntime",
                                                "resolved": "onnxruntime"}
    assert exact.parameters["backend"] == {"requested": "fp32", "resolved": "fp32"}
    diff = abs(fast.heatmap.astype(float) - exact.heatmap.astype(float))
    assert float(diff[~(diff != diff)].max()) < bk.TOLERANCE["onnxruntime"]
    with pytest.raises(WsiDetectError):  # an onnxruntime store is not resumed as fp32
        detect_metastases(phantom_small, out=tmp_path / "b", **run)


def test_cli_backend_flag_reaches_the_summary(phantom_small, tmp_path) -> None:
    import json

    from napari_wsi_detect.cli import main
    from napari_wsi_detect.models.io import save_model

    torch.manual_seed(0)
    weights, _ = save_model(ScanNetFCN(width=0.0625), tmp_path / "tiny",
                            {"mpp": 0.243, "task": "metastases"})
    base = ["metastases", str(phantom_small), "--model", str(weights), "--device", "cpu",
            "--region", "1024,1024,256,256", "--roi-cells", "8", "--no-tissue-mask",
            "--quiet"]
    # bf16 autocast needs no optional package (slow without native bf16, still correct)
    assert main([*base, "--backend", "bf16", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["parameters"]["backend"] == {"requested": "bf16", "resolved": "bf16"}
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2 with the list of choices
        main([*base, "--backend", "tensorrt", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_on_a_gpu_auto_is_fp32_and_cpu_engines_are_refused(monkeypatch) -> None:
    # no GPU here: only the device's type is faked, the rule itself runs
    monkeypatch.setattr(bk, "_device_type", lambda device: "cuda")
    assert bk.resolve_backend("auto", "cuda", "metastases") == "fp32"
    assert bk.resolve_backend("bf16", "cuda", "metastases") == "bf16"  # AMP
    assert bk.available_backends("cuda") == ["fp32", "bf16", "compile"]
    if not bk.missing_packages("openvino"):
        with pytest.raises(WsiDetectError, match="CPU only"):
            bk.resolve_backend("openvino", "cuda")
