"""Width multiplier, weight sharing, flop counts, and a smoke run of the benchmark."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from napari_wsi_detect.models.anchor import dense_flops, densify, input_size
from napari_wsi_detect.models.scannet import (
    DEFAULT_CPU_WIDTH,
    PATCH,
    STRIDE,
    ScanNetFCN,
    conv_layers,
)


@pytest.mark.parametrize("width", [1.0, 0.5, 0.125])
def test_width_keeps_geometry(width):
    model = ScanNetFCN(width=width).eval()
    convs = conv_layers(model)
    assert convs[0].out_channels == max(1, round(64 * width))
    assert convs[-1].out_channels == 2
    with torch.no_grad():
        # 244 → one cell; 243 is refused; each extra 32 px adds one cell, 31 do not.
        assert model(torch.zeros(1, 3, PATCH, PATCH)).shape == (1, 2, 1, 1)
        assert model(torch.zeros(1, 3, PATCH + STRIDE, PATCH + STRIDE - 1)).shape == (
            1, 2, 2, 1)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, PATCH - 1, PATCH))


def test_receptive_field_is_exactly_244():
    """Perturbing the first or last row / column of the 244 patch changes its output;
    the first row of the next patch (in a taller input) changes nothing for that cell.
    (Whole edges, not single corner pixels: a corner pixel reaches the output through
    one kernel tap per layer, which a ReLU can switch off for a given random model.)"""
    torch.manual_seed(0)
    model = ScanNetFCN(width=1 / 16).eval()
    x = torch.rand(1, 3, PATCH + STRIDE, PATCH)
    noise = 100 * torch.randn(1, 3, PATCH)
    with torch.no_grad():
        base = model(x)[0, :, 0, 0]
        for edge in (0, PATCH - 1):
            y = x.clone()
            y[..., edge, :] += noise
            assert not torch.equal(model(y)[0, :, 0, 0], base), f"row {edge}"
            y = x.clone()
            y[..., :PATCH, edge] += noise
            assert not torch.equal(model(y)[0, :, 0, 0], base), f"column {edge}"
        y = x.clone()
        y[..., PATCH, :] += noise  # first row below the patch
        assert torch.equal(model(y)[0, :, 0, 0], base)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = ScanNetFCN(width=1 / 16)
    x = torch.rand(2, 3, PATCH, PATCH)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_densify_shares_weights():
    torch.manual_seed(0)
    model = ScanNetFCN(width=1 / 16).eval()
    dense = densify(model, 2)
    assert {id(p) for p in dense.parameters()} == {id(p) for p in model.parameters()}
    x = torch.rand(1, 3, input_size(3, 2), input_size(2, 2))
    with torch.no_grad():
        before = dense(x).clone()
        model.head[-1].bias.copy_(torch.tensor([0.0, 5.0]))  # push towards "tumour"
        after = dense(x)
    assert (after > before).all()


def test_predict_proba_is_softmax_of_class_1():
    torch.manual_seed(0)
    model = ScanNetFCN(width=1 / 16).eval()
    x = torch.rand(1, 3, PATCH + 64, PATCH)
    p = model.predict_proba(x)
    assert p.shape == (1, 3, 1)
    with torch.no_grad():
        assert torch.allclose(p, torch.softmax(model(x), 1)[:, 1])
    assert ((p > 0) & (p < 1)).all()


def test_flops_of_full_vgg16_match_paper_order():
    # METHODS: full VGG16 ≈ 5 TFLOP per 2868² ROI; width w costs ≈ w² of it.
    full = dense_flops(ScanNetFCN(width=1.0), 2868, 2868, 1)
    assert 4.5e12 < full < 5.5e12
    small = dense_flops(ScanNetFCN(width=DEFAULT_CPU_WIDTH), 2868, 2868, 1)
    assert small == pytest.approx(full * DEFAULT_CPU_WIDTH**2, rel=0.05)
    # α = 2 on the 16 px larger ROI costs a few % more, not 4×
    assert 1.0 < dense_flops(ScanNetFCN(width=1.0), 2884, 2884, 2) / full < 1.1


def test_bf16_path_is_close_but_optional():
    torch.manual_seed(0)
    model = ScanNetFCN(width=1 / 16).eval()
    x = torch.rand(1, 3, input_size(2, 2), input_size(3, 2))
    with torch.no_grad():
        exact = densify(model, 2)(x)
        half = densify(model, 2, bf16=True)(x)
    assert half.dtype == torch.float32 and half.shape == exact.shape
    assert (half - exact).abs().max() < 0.05


def test_bench_quick_smoke(capsys, tmp_path):
    from napari_wsi_detect.benchmarks import scannet as bench

    assert bench.DEFAULT_CPU_WIDTH == DEFAULT_CPU_WIDTH
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["--quick", "--roi", "372", "--repeats", "1", "--patches", "2",
                              "--width", "0.0625", "--json", str(out)])
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    assert "EXTRAPOLATED" in text and "shift-and-stitch" in text and "GFLOP/s" in text
    result = json.loads(out.read_text())
    assert result["cells"] == 8 and result["roi"] == input_size(8, 2)
    for key in ("patchwise_speedup", "alpha_cost_ratio", "sas_speedup", "matmul_gflops"):
        assert result[key] > 0
    assert any("bf16" in row["option"] for row in result["cpu_options"])
