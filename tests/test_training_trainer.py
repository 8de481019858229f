"""Trainer: resumable checkpoints (no pickle) give the same losses as an uninterrupted run;
hard negative mining finds the normal cells a model fires on."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_wsi_detect.training.hard_negatives import slide_false_positives
from napari_wsi_detect.training.metastases import TrainConfig, train_metastases
from napari_wsi_detect.training.sampler import candidates_from_masks
from napari_wsi_detect.training.testing import MemorySlide, write_training_slide
from napari_wsi_detect.training.truth import PolygonTruth, TumourTruth


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    # One small slide holds both classes (tumour ellipse on normal tissue).
    write_training_slide(d / "tumor_001.tif", size=(768, 512), tumour=(380, 256, 150, 110))
    return d


def _cfg(**kw):
    base = dict(width=1 / 32, steps=4, batch_size=2, val_every=2, checkpoint_every=2,
                val_patches=4, workers=0, seed=11, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _losses(out):
    return {int(r["step"]): r["loss"] for r in csv.DictReader((out / "metrics.csv").open())}


def test_resume_continues_with_identical_losses(slides, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = train_metastases([slides], a, _cfg(), progress=False, log=lambda m: None)
    # Interrupted after step 2 (1 producer process), then resumed synchronously.
    train_metastases([slides], b, _cfg(workers=1), progress=False, log=lambda m: None,
                     stop_after=2)
    state = json.loads((b / "checkpoints" / "latest.json").read_text())
    assert state["step"] == 2
    rb = train_metastases([slides], b, _cfg(), resume=True, progress=False,
                          log=lambda m: None)
    assert ra.steps == rb.steps == 4
    assert _losses(a) == _losses(b)  # steps 3, 4 recomputed after the resume: identical
    from safetensors.torch import load_file

    wa, wb = load_file(str(ra.model_path)), load_file(str(rb.model_path))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Checkpoints are safetensors + JSON only, with the optimiser's momentum inside.
    ck = next((b / "checkpoints").glob("step-*"))
    assert sorted(p.name for p in ck.iterdir()) == [
        "model.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    opt = load_file(str(ck / "optimizer.safetensors"))
    assert any(k.endswith("momentum_buffer") for k in opt) and "rng.torch_cpu" in opt
    cfg = json.loads(rb.config_path.read_text())
    assert cfg["mpp"] == 0.243 and cfg["normalisation"]["std"] == [0.25] * 3
    assert cfg["training"]["config"]["seed"] == 11
    assert (b / "learning_curve.png").stat().st_size > 1000


class LightsRed(torch.nn.Module):
    """Stub dense model: each cell's probability = mean redness (R − G) of the S×S block
    at its patch centre, so it fires exactly where a red square is."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = (244 - self.stride) // 2
        red = (x[:, 0:1] - x[:, 1:2]).clamp(0, 1)[..., o:x.shape[-2] - o, o:x.shape[-1] - o]
        return F.avg_pool2d(red, self.stride, self.stride)[:, 0]


def test_hard_negatives_are_found_at_the_lit_normal_cells():
    img = np.full((768, 1024, 3), (230, 160, 200), np.uint8)
    img[256:320, 640:704] = (255, 0, 0)  # red on normal tissue: a false positive
    img[320:384, 192:256] = (255, 0, 0)  # red inside the tumour: not a negative
    slide = MemorySlide(img, mpp=0.243)
    from shapely.geometry import box

    truth = PolygonTruth(box(100, 250, 400, 450))

    class Tissue:
        mask = np.ones((24, 32), bool)
        downsample = 32.0

        def fraction(self, x, y, w, h):
            return 1.0

    cands = candidates_from_masks("m", 0.243, (1024, 768), Tissue.mask, 32.0, truth)
    pts, probs = slide_false_positives(slide, LightsRed(16), cands, 0.243, threshold=0.5,
                                       alpha=2, margin=20, tissue=Tissue(), roi_cells=16)
    assert len(pts) == 16  # the 64×64 red square = 4×4 cells at stride 16
    assert pts[:, 0].min() == 648 and pts[:, 0].max() == 696  # cell centres (c + ½)·16
    assert pts[:, 1].min() == 264 and pts[:, 1].max() == 312
    assert (probs > 0.99).all()
    # Nothing inside (or within the margin of) the tumour is ever a hard negative.
    assert not truth.near(pts[:, 0], pts[:, 1], 20).any()
    # A normal slide: the same red square is mined.
    cands_n = candidates_from_masks("n", 0.243, (1024, 768), Tissue.mask, 32.0, TumourTruth())
    pts_n, _ = slide_false_positives(slide, LightsRed(16), cands_n, 0.243, alpha=2,
                                     tissue=Tissue(), roi_cells=16)
    assert len(pts_n) == 32


def test_fine_tuning_starts_from_given_weights_with_its_own_stage2_lr(slides, tmp_path):
    from safetensors.torch import load_file

    from napari_wsi_detect.errors import WsiDetectError

    base = train_metastases([slides], tmp_path / "base", _cfg(), progress=False,
                            log=lambda m: None)
    # No steps at all: the written model is the initial model, bit for bit.
    same = train_metastases([slides], tmp_path / "same",
                            _cfg(steps=0, init_model=str(base.config_path)),
                            progress=False, log=lambda m: None)
    w0, w1 = load_file(str(base.model_path)), load_file(str(same.model_path))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # steps=0 + hard negatives: mine with the initial model at once, then fine-tune at
    # the stage-2 lr with label smoothing.
    ft = train_metastases([slides], tmp_path / "ft",
                          _cfg(steps=0, init_model=str(base.config_path), hard_negatives=True,
                               hard_negative_steps=2, stage2_lr=1e-5, label_smoothing=0.1),
                          progress=False, log=lambda m: None)
    rows = list(csv.DictReader((tmp_path / "ft" / "metrics.csv").open()))
    assert [int(r["stage"]) for r in rows] == [2, 2]
    assert all(float(r["lr"]) == 1e-5 for r in rows)
    assert ft.mining is not None
    with pytest.raises(WsiDetectError, match="width"):
        train_metastases([slides], tmp_path / "bad",
                         _cfg(width=1 / 16, steps=0, init_model=str(base.config_path)),
                         progress=False, log=lambda m: None)


def test_label_smoothing_bounds_the_loss_of_a_confident_correct_logit():
    from napari_wsi_detect.training.metastases import _loss

    out = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    y = torch.tensor([0, 1])
    assert float(_loss(out, y, _cfg())) < 1e-6  # plain CE: saturated logits cost nothing
    # With smoothing 0.1, saturated logits are penalised (≈ 0.05 · 40): training keeps
    # the logits finite instead of pushing them towards p = 1.0.
    assert float(_loss(out, y, _cfg(label_smoothing=0.1))) > 1.0
