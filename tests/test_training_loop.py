"""The generic training loop on a toy task (no slides): stages, the stage lr, the
between-stages hook, validation cadence, exact resume; and the patch AUC of the
metastasis task against a pairwise count."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from napari_wsi_detect.training.loop import LoopSettings, Stage, fit, make_optimizer


class ToySource:
    def __init__(self, seed: int, shift: float) -> None:
        self.seed, self.shift = seed, shift

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def make_batch(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        x = rng.normal(size=(8, 4)).astype(np.float32)
        y = (x[:, 0] + self.shift > 0).astype(np.int64)
        return x, y


class ToyTask:
    name = "toy"
    title = "toy"
    loss_label = "cross-entropy"
    val_fields = ("val_loss",)
    device = torch.device("cpu")

    def __init__(self, out, seed: int = 3) -> None:
        self.out = out
        self.settings = LoopSettings(seed=seed, workers=0, val_every=2, checkpoint_every=2)
        self.stages = [Stage(3), Stage(3, lr=0.05, label="second")]
        self.calls: list[tuple] = []
        self.val_x, self.val_y = ToySource(99, 0.0).make_batch(0)

    def build_model(self):
        # Dropout draws from torch's global RNG: exact resume needs it restored.
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3),
                                   torch.nn.Linear(8, 2))

    def make_optimizer(self, model):
        return make_optimizer(model, "sgd", 0.2, 0.9, 0.0)

    def batch_source(self, stage):
        self.calls.append(("source", stage))
        return ToySource(self.settings.seed, 0.0 if stage == 1 else 0.5)

    def to_device(self, images, labels):
        return torch.from_numpy(images), torch.from_numpy(labels)

    def loss(self, out, y):
        return torch.nn.functional.cross_entropy(out, y)

    def accuracy(self, out, y):
        return float((out.argmax(1) == y).float().mean())

    def validate(self, model):
        with torch.no_grad():
            model.eval()
            v = float(self.loss(model(torch.from_numpy(self.val_x)), torch.from_numpy(self.val_y)))
            model.train()
        return {"val_loss": v}

    def model_config(self, extra, final=False):
        return {"name": "toy", "architecture": "toy", "training": {**extra, "final": final}}

    def config_dict(self):
        return {"seed": self.settings.seed}

    def between_stages(self, stage, model):
        self.calls.append(("between", stage))
        (self.out / "between.json").write_text(json.dumps({"stage": stage}))

    def restore(self, stage):
        self.calls.append(("restore", stage))


def _rows(out):
    return list(csv.DictReader((out / "metrics.csv").open()))


def _fit(task, out, **kw):
    return fit(task, out, progress=False, log=lambda m: None, **kw)


def test_stages_hook_lr_and_validation_cadence(tmp_path, monkeypatch):
    _toy_models_io(monkeypatch)
    task = ToyTask(tmp_path)
    r = _fit(task, tmp_path)
    assert r.steps == 6
    assert task.calls == [("source", 1), ("between", 1), ("source", 2)]
    rows = _rows(tmp_path)
    assert [int(r["stage"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    assert [float(r["lr"]) for r in rows] == [0.2] * 3 + [0.05] * 3
    # Every val_every steps and at each stage's end.
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [2, 3, 4, 6]
    assert list(rows[0]) == ["step", "stage", "loss", "accuracy", "lr", "data_wait_s",
                             "step_s", "val_loss", "time_s"]
    cfg = json.loads(r.config_path.read_text())
    assert cfg["training"]["final"] and cfg["training"]["steps_done"] == 6


def test_resume_in_the_second_stage_is_exact(tmp_path, monkeypatch):
    _toy_models_io(monkeypatch)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ra = _fit(ToyTask(a), a)
    _fit(ToyTask(b), b, stop_after=5)  # interrupted in stage 2
    task = ToyTask(b)
    rb = _fit(task, b, resume=True)
    assert task.calls == [("restore", 2), ("source", 2)]  # no second between_stages
    assert [r["loss"] for r in _rows(a)] == [r["loss"] for r in _rows(b)]
    from safetensors.torch import load_file

    wa, wb = load_file(str(ra.model_path)), load_file(str(rb.model_path))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _toy_models_io(monkeypatch):
    """models.io knows registered architectures only; save/load the toy's state dict."""
    from safetensors.torch import load_file, save_file

    import napari_wsi_detect.models.io as mio

    def save_model(model, stem, config):
        w, c = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(w))
        c.write_text(json.dumps(config))
        return w, c

    def load_model(path, device="cpu"):
        from pathlib import Path

        model = ToyTask(None).build_model()
        model.load_state_dict(load_file(str(Path(path).with_suffix(".safetensors"))))
        return model, json.loads(Path(path).with_suffix(".json").read_text())

    monkeypatch.setattr(mio, "save_model", save_model)
    monkeypatch.setattr(mio, "load_model", load_model)


def test_patch_auc_is_the_pairwise_count_with_ties_half():
    from napari_wsi_detect.training.metastases import _patch_auc

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        p = rng.integers(0, 5, n) / 4.0  # few distinct values: many ties
        pos, neg = p[y == 1], p[y == 0]
        pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert _patch_auc(y, p) == pairs / (len(pos) * len(neg))
    assert _patch_auc(np.zeros(4, int), np.arange(4.0)) is None  # one class: no AUC
    assert _patch_auc(np.zeros(0, int), np.zeros(0)) is None
    assert np.isnan(_patch_auc(np.array([0, 1]), np.array([np.nan, 0.5])))
