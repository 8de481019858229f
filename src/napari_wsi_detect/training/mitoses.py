"""Training the SegMitos mitosis segmenter on MIDOG 2021 crops (METHODS §2).

`--slides` is the crop folder (labels.csv + patches/), `--annotations` the MIDOG++ COCO
file (every other figure and every imposter inside the crops). Inputs are random
guillotine mosaics of rotated/flipped crop windows with H&E stain jitter
(training/midog.py), labels concentric (training/concentric.py), the loss the concentric
loss with L2 weight decay. Two stages: the learning rate drops ×10 for the last quarter.

Validation is on fields built from the crops of held-out source images (split by slide,
stratified by scanner; or the images named by --val-slides): the concentric loss with the
r12R24 labels and the MIDOG F1 (evaluation/detection.py: 7.5 µm, greedy one-to-one) of
the full post-processing (postprocess/blobs.py) at the model's default slider values.
Those defaults (min_score, min_area_um2) are chosen at the end on fields of TRAINING crops,
never on the validation fields.

torch is imported inside functions only (the CLI builds the flags from the config).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import WsiDetectError

if TYPE_CHECKING:
    import torch

MODEL_NAME = "mitoses"
MODEL_MPP = 0.25
DEFAULT_POST = {"min_score": 0.5, "min_area_um2": 12.0, "smoothing_um": 2.0}


def _flag(default: object, text: str, **cli: object) -> Any:
    return field(default=default, metadata={"help": text, **cli})


@dataclass
class MitosisTrainConfig:
    """Everything that decides a mitosis training run (recorded in the model's JSON)."""

    width: float = _flag(0.125, "channel width multiplier of the VGG16-style backbone")
    variant: str = _flag("8s", "FCN variant", choices=("32s", "16s", "8s"))
    steps: int = _flag(800, "training steps (the last quarter at lr/10)", min=1)
    batch_size: int = _flag(8, "mosaics per step", min=1)
    input_size: int = _flag(256, "mosaic side in px (a multiple of 32)", min=64)
    lr: float = _flag(2e-3, "learning rate")
    optimizer: str = _flag("adam", "optimiser", choices=("sgd", "adam"))
    momentum: float = 0.9
    weight_decay: float = _flag(5e-4, "L2 weight decay")
    label_mode: str = _flag("mixed", "concentric labels: random radii, r12R24, r15R30 "
                                     "or mixed", choices=("mixed", "random", "r12R24",
                                                          "r15R30"))
    hard_weight: float = _flag(3.0, "loss weight of background pixels on imposters")
    val_fraction: float = _flag(0.15, "fraction of each scanner's source images held out "
                                      "(ignored with --val-slides)")
    split_seed: int = _flag(0, "seed of the slide split")
    val_fields: int = _flag(16, "validation fields")
    val_field_size: int = _flag(384, "validation field side in px")
    workers: int = _flag(1, "prefetching producer processes (0 = in the training loop)")
    queue_size: int = _flag(4, "batches prefetched at most")
    seed: int = _flag(0, "seed of weights, batches and augmentation")
    val_every: int = _flag(100, "validate every N steps")
    checkpoint_every: int = _flag(100, "checkpoint every N steps")
    keep_checkpoints: int = 2
    device: str = _flag("auto", "auto, cpu, cuda, cuda:1, mps")
    norm_mean: tuple = (0.5, 0.5, 0.5)
    norm_std: tuple = (0.25, 0.25, 0.25)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["norm_mean"], d["norm_std"] = list(self.norm_mean), list(self.norm_std)
        return d

    @property
    def stage_steps(self) -> tuple[int, int]:
        second = self.steps // 4
        return self.steps - second, second


@dataclass
class MitosisTrainResult:
    model_path: Path
    config_path: Path
    steps: int
    metrics_csv: Path
    curve_png: Path | None
    final_val: dict
    seconds: float


class MitosisTraining:
    """The mitosis `TrainingTask` (training/loop.py)."""

    name = MODEL_NAME
    title = "SegMitos mitosis training (MIDOG 2021 crops)"
    loss_label = "concentric loss"
    val_fields = ("val_loss", "val_f1", "val_precision", "val_recall")

    def __init__(self, cfg: MitosisTrainConfig, crops_dir: str, coco: str | None,
                 val_slides: Sequence[str] | None = None,
                 log: Callable[[str], None] = print) -> None:
        from ..models.device import resolve_device
        from .loop import LoopSettings, Stage
        from .midog import load_crops, make_fields, split_by_slide

        if cfg.input_size % 32:
            raise WsiDetectError(f"--input-size must be a multiple of 32, got {cfg.input_size}")
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)
        self.settings = LoopSettings(cfg.seed, cfg.workers, cfg.queue_size, cfg.val_every,
                                     cfg.checkpoint_every, cfg.keep_checkpoints)
        s1, s2 = cfg.stage_steps
        self.stages = [Stage(s1)] + ([Stage(s2, cfg.lr / 10, "lr/10")] if s2 else [])
        self.crops_dir, self.coco = str(crops_dir), coco
        crops = load_crops(crops_dir, coco)
        if val_slides:
            names = {Path(v).name for v in val_slides}
            unknown = names - {c.slide for c in crops}
            if unknown:
                raise WsiDetectError(f"--val-slides names source images with no crop in "
                                     f"{crops_dir}: {', '.join(sorted(unknown))}")
            self.train = [c for c in crops if c.slide not in names]
            self.val = [c for c in crops if c.slide in names]
            self.val_slides = sorted(names)
        else:
            self.train, self.val, self.val_slides = split_by_slide(
                crops, cfg.val_fraction, cfg.split_seed)
        if not self.train or not self.val:
            raise WsiDetectError("the split left no training or no validation crops")
        log(f"crops: {len(self.train)} training, {len(self.val)} validation from "
            f"{len(self.val_slides)} held-out source images ({', '.join(self.val_slides)})")
        self.fields = make_fields(self.val, cfg.val_fields, cfg.val_field_size, cfg.seed + 7)
        log(f"validation fields: {len(self.fields)} of {cfg.val_field_size}² px, "
            f"{sum(len(f.figures) for f in self.fields)} figures")
        self.post = dict(DEFAULT_POST)
        self.extra: dict = {}

    def build_model(self) -> torch.nn.Module:
        from ..models.segmitos import SegMitosFCN

        return SegMitosFCN(width=self.cfg.width, variant=self.cfg.variant).to(self.device)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        from .loop import make_optimizer

        c = self.cfg
        return make_optimizer(model, c.optimizer, c.lr, c.momentum, c.weight_decay)

    def batch_source(self, stage: int) -> object:
        from .midog import MosaicSource

        c = self.cfg
        return MosaicSource(self.train, c.batch_size, c.input_size, c.seed,
                            label_mode=c.label_mode)

    def to_device(self, images: np.ndarray, labels: np.ndarray
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from .loop import to_input

        x = to_input(images, self.cfg.norm_mean, self.cfg.norm_std, self.device)
        return x, torch.from_numpy(np.ascontiguousarray(labels)).to(self.device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .concentric import concentric_loss

        return concentric_loss(out, y, self.cfg.hard_weight)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        """Pixel accuracy over the counted pixels (discs and background)."""
        import torch.nn.functional as F

        from .concentric import IGNORE, MITOSIS

        up = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        counted = y != IGNORE
        right = (up.argmax(1) == (y == MITOSIS).long()) & counted
        return float(right.sum()) / max(1, int(counted.sum()))

    def validate(self, model: torch.nn.Module) -> dict:
        return evaluate_fields(model, self.fields, self.cfg, self.post, self.device)

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def model_config(self, extra: dict, final: bool = False) -> dict:
        cfg = self.cfg
        return {
            "name": MODEL_NAME,
            "task": "mitoses",
            "mpp": MODEL_MPP,
            "class_names": ["background", "mitosis"],
            "normalisation": {"mean": list(cfg.norm_mean), "std": list(cfg.norm_std)},
            "thresholds": dict(self.post),
            "seed": cfg.seed,
            "training": {
                "data": self.crops_dir, "annotations": self.coco,
                "train_crops": len(self.train), "val_crops": len(self.val),
                "val_slides": self.val_slides,
                "val_source": "fields of crops from held-out source images",
                "config": cfg.to_dict(), **self.extra, **extra,
            },
        }

    def between_stages(self, stage: int, model: torch.nn.Module) -> None:
        pass

    def restore(self, stage: int) -> None:
        pass

    def choose_post(self, model: torch.nn.Module) -> dict:
        """Default min_score / min_area_um2: the best F1 on fields of training crops."""
        from .midog import make_fields

        fields = make_fields(self.train, self.cfg.val_fields, self.cfg.val_field_size,
                             self.cfg.seed + 11)
        maps = field_maps(model, fields, self.cfg, self.device)
        best = (-1.0, self.post)
        for s1 in (0.3, 0.4, 0.5, 0.6, 0.7):
            for a1 in (4.0, 8.0, 12.0, 20.0, 28.0):
                post = {**self.post, "min_score": s1, "min_area_um2": a1}
                f1 = fields_f1(maps, fields, post)["val_f1"] or 0.0
                if f1 > best[0] + 1e-9:
                    best = (f1, post)
        self.log(f"slider defaults chosen on training fields: {best[1]} (F1 {best[0]:.3f})")
        self.extra["defaults_chosen_on"] = "fields of training crops"
        self.extra["train_fields_f1"] = round(best[0], 4)
        return best[1]


def field_maps(model: torch.nn.Module, fields: Sequence[Any], cfg: MitosisTrainConfig,
               device: Any, pad: int = 64) -> list[np.ndarray]:
    """Mitosis map (stride 8) of each field, the field padded with white by `pad` px as
    the engine reads past a slide's edge."""
    import torch

    from ..models.segmitos import OUTPUT_STRIDE, pad_to_grid
    from .loop import to_input

    was = model.training
    model.eval()
    maps = []
    k = pad // OUTPUT_STRIDE
    with torch.no_grad():
        for f in fields:
            img = np.pad(f.image, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
            x = pad_to_grid(to_input(img[None], cfg.norm_mean, cfg.norm_std, device))
            p = torch.softmax(model(x).float(), 1)[0, 1].cpu().numpy()
            n = f.image.shape[0] // OUTPUT_STRIDE
            maps.append(p[k:k + n, k:k + n])
    model.train(was)
    return maps


def fields_f1(maps: Sequence[np.ndarray], fields: Sequence[Any], post: dict) -> dict:
    from ..engine.plan import MapGeometry
    from ..evaluation.detection import CaseEval, evaluate_f1
    from ..models.segmitos import HALO, OUTPUT_STRIDE
    from ..postprocess.blobs import find_mitoses

    cases = []
    for i, (m, f) in enumerate(zip(maps, fields, strict=True)):
        g = MapGeometry.for_slide(f.image.shape[:2], MODEL_MPP, MODEL_MPP, alpha=1,
                                  patch=OUTPUT_STRIDE + 2 * HALO, model_stride=OUTPUT_STRIDE)
        found = find_mitoses(m, g, min_score=post["min_score"],
                             min_area_um2=post["min_area_um2"],
                             smoothing_um=post["smoothing_um"]).mitoses
        det = np.asarray([(d.score, d.x, d.y) for d in found]).reshape(-1, 3)
        cases.append(CaseEval(f"field{i}", f.figures, det, MODEL_MPP))
    r = evaluate_f1(cases, curve=False)
    return {"val_f1": _finite(r.f1), "val_precision": _finite(r.precision),
            "val_recall": _finite(r.recall), "tp": r.tp, "fp": r.fp, "fn": r.fn}


def _finite(v: float) -> float | None:
    return None if v != v else float(v)  # NaN (no detections / no truth) -> None


def evaluate_fields(model: torch.nn.Module, fields: Sequence[Any], cfg: MitosisTrainConfig,
                    post: dict, device: Any) -> dict:
    """Concentric loss (r12R24 labels) and MIDOG F1 on the validation fields."""
    import torch

    from .concentric import concentric_label, concentric_loss, draw_radii

    maps = field_maps(model, fields, cfg, device)
    losses = []
    for m, f in zip(maps, fields, strict=True):
        r, big = draw_radii(np.random.default_rng(0), len(f.figures), "r12R24")
        lab = concentric_label(f.image.shape[:2], f.figures - 0.5, r, big, f.imposters - 0.5)
        p = torch.from_numpy(np.clip(m, 1e-6, 1 - 1e-6))
        logits = torch.log(torch.stack([1 - p, p]))[None]
        losses.append(float(concentric_loss(logits, torch.from_numpy(lab)[None], 1.0)))
    out = fields_f1(maps, fields, post)
    return {"val_loss": float(np.mean(losses)), "val_f1": out["val_f1"],
            "val_precision": out["val_precision"], "val_recall": out["val_recall"]}


def train_mitoses(slides: Sequence[str | os.PathLike], out: str | os.PathLike,
                  config: MitosisTrainConfig | None = None,
                  annotations: Sequence[str | os.PathLike] | None = None,
                  val_slides: Sequence[str | os.PathLike] | None = None,
                  val_annotations: Sequence[str | os.PathLike] | None = None,
                  resume: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print,
                  stop_after: int | None = None) -> MitosisTrainResult:
    """Train (or resume) a mitosis model into `out`. `slides`: one MIDOG crop folder;
    `annotations`: the MIDOG++ COCO JSON (optional: without it only each crop's own
    figure is known); `val_slides`: source image names to hold out."""
    from ..models.io import save_model
    from .loop import fit

    t_start = time.perf_counter()
    cfg = config or MitosisTrainConfig()
    if len(slides) != 1 or not Path(slides[0]).is_dir():
        raise WsiDetectError("train mitoses takes one --slides folder of MIDOG crops "
                             "(labels.csv + patches/), e.g. ../shared/data/mitosis-midog21")
    coco = str(annotations[0]) if annotations else None
    out = Path(out)
    task = MitosisTraining(cfg, str(slides[0]), coco,
                           [str(v) for v in val_slides] if val_slides else None, log)
    r = fit(task, out, resume=resume, progress=progress, log=log, stop_after=stop_after,
            started=t_start)
    final = dict(r.final_val)
    if stop_after is None or r.steps >= sum(s.steps for s in task.stages):
        from ..models.io import load_model

        model, _ = load_model(r.config_path, device=task.device)
        task.post = task.choose_post(model)
        final = task.validate(model)
        log(f"validation at the chosen defaults: {final}")
        save_model(model, out / task.name,
                   task.model_config({"final_validation": final, "steps_done": r.steps},
                                     final=True))
    return MitosisTrainResult(r.model_path, r.config_path, r.steps, r.metrics_csv,
                              r.curve_png, final, time.perf_counter() - t_start)


__all__ = ["DEFAULT_POST", "MODEL_NAME", "MitosisTrainConfig", "MitosisTraining",
           "MitosisTrainResult", "evaluate_fields", "train_mitoses"]
