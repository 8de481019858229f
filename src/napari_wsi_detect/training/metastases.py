"""Training the Fast ScanNet metastasis classifier (METHODS §1 (5)).

Stage 1 trains the no-padding VGG FCN on 244×244 patches drawn with set class
probabilities, augmented on the fly by prefetching producer processes. Stage 2 (with
`hard_negatives`) runs the stage-1 model densely over the training slides, adds its false
positives on normal tissue as a `hard` class, and trains on. The loop, checkpoints and
exact resume are training/loop.py's; this module is the metastasis part of it.

torch is imported inside functions only: `wsi-detect` builds the `train metastases` flags
from `TrainConfig` at start-up, and `wsi-detect --help` must not pay for loading torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import WsiDetectError
from .augment import AugmentConfig

if TYPE_CHECKING:
    import torch

MODEL_NAME = "metastases"


def parse_class_probs(text: str) -> dict[str, float]:
    """"normal=0.5,tumour=0.5" → {"normal": 0.5, "tumour": 0.5}."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError as exc:
        raise ValueError(
            f"class probabilities look like normal=0.5,tumour=0.5 (got {text!r})") from exc


def _flag(default: object, text: str, **cli: object) -> Any:
    # A field with "help" in its metadata is a `wsi-detect train metastases` flag; the
    # other keys go to argparse (commands/train.py). Fields without one stay Python-only.
    if callable(default):
        return field(default_factory=default, metadata={"help": text, **cli})
    return field(default=default, metadata={"help": text, **cli})


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in the model's JSON)."""

    width: float = _flag(0.125, "channel width multiplier")
    steps: int = _flag(1000, "stage-1 training steps", min=1)
    hard_negatives: bool = _flag(
        False, "stage 2: mine the stage-1 model's false positives and train on")
    # 0 with hard_negatives → steps // 2
    hard_negative_steps: int = _flag(0, "stage-2 steps (default: half of --steps)")
    batch_size: int = _flag(16, "patches per step", min=1)
    lr: float = _flag(0.01, "learning rate")
    optimizer: str = _flag("sgd", "optimiser", choices=("sgd", "adam"))
    momentum: float = 0.9
    weight_decay: float = 5e-4
    class_probs: dict = _flag(lambda: {"normal": 0.5, "tumour": 0.5},
                              "patch class probabilities, e.g. normal=0.5,tumour=0.5",
                              type=parse_class_probs)
    stage2_class_probs: dict = field(
        default_factory=lambda: {"normal": 0.25, "hard": 0.25, "tumour": 0.5})
    class_weights: list | None = _flag(None, "cross-entropy class weights", type=float,
                                       nargs=2, metavar=("NORMAL", "TUMOUR"))
    workers: int = _flag(1, "prefetching producer processes (0 = read in the training loop)")
    queue_size: int = _flag(4, "batches prefetched at most")
    seed: int = _flag(0, "seed of weights, batches and augmentation")
    model_mpp: float = _flag(0.243, "µm/px the model works at (slides at other mpp are "
                                    "resampled)")
    val_every: int = _flag(100, "validate every N steps")
    val_patches: int = _flag(128, "validation patches")
    checkpoint_every: int = _flag(100, "checkpoint every N steps")
    keep_checkpoints: int = 2
    hnm_threshold: float = _flag(0.5, "tumour probability above which a cell on normal "
                                      "tissue is a hard negative")
    hnm_alpha: int = _flag(2, "density of the mining run (map stride 32/alpha)")
    hnm_margin_um: float = 50.0
    hnm_max_per_slide: int = 2000
    # Stage 2 fine-tunes on the mined points; a lower lr there (None: keep `lr`) stops the
    # logits from saturating. Label smoothing (0: plain cross-entropy) bounds them too.
    stage2_lr: float | None = None
    label_smoothing: float = 0.0
    # Start from this model's weights (a models.io NAME.json / .safetensors of the same
    # width) instead of a random initialisation; with steps=0 the run mines at once and
    # only fine-tunes (a further round of hard negative mining on new slides).
    init_model: str | None = None
    device: str = _flag("auto", "auto, cpu, cuda, cuda:1, mps")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Model input = (rgb/255 − mean)/std; written to the model JSON for the engine.
    norm_mean: tuple = (0.5, 0.5, 0.5)
    norm_std: tuple = (0.25, 0.25, 0.25)

    @property
    def stage2_steps(self) -> int:
        if not self.hard_negatives:
            return 0
        return self.hard_negative_steps or max(1, self.steps // 2)

    @property
    def total_steps(self) -> int:
        return self.steps + self.stage2_steps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["norm_mean"], d["norm_std"] = list(self.norm_mean), list(self.norm_std)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        aug = AugmentConfig(**data.pop("augment", {}) or {})
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["norm_mean"] = tuple(known.get("norm_mean", (0.5, 0.5, 0.5)))
        known["norm_std"] = tuple(known.get("norm_std", (0.25, 0.25, 0.25)))
        return cls(augment=aug, **known)


@dataclass
class TrainResult:
    model_path: Path
    config_path: Path
    steps: int
    metrics_csv: Path
    curve_png: Path | None
    final_val: dict
    mining: dict | None
    seconds: float


class MetastasisTraining:
    """The metastasis `TrainingTask` (training/loop.py): stage 1 on the sampler's
    classes, then (with `hard_negatives`) stage 2 with the mined `hard` class."""

    name = MODEL_NAME
    title = "Fast ScanNet metastasis training"
    loss_label = "cross-entropy"
    val_fields = ("val_loss", "val_accuracy", "val_auc")

    def __init__(self, cfg: TrainConfig, out: Path, slides: Sequence[str | os.PathLike],
                 annotations: Sequence[str | os.PathLike] | None = None,
                 val_slides: Sequence[str | os.PathLike] | None = None,
                 val_annotations: Sequence[str | os.PathLike] | None = None,
                 log: Callable[[str], None] = print) -> None:
        from ..models.device import resolve_device
        from .loop import LoopSettings, Stage
        from .patches import PatchBatchSource, read_fixed_set
        from .sampler import PatchSampler
        from .slides import expand_slides, load_candidates, pair_annotations

        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)
        self.settings = LoopSettings(cfg.seed, cfg.workers, cfg.queue_size, cfg.val_every,
                                     cfg.checkpoint_every, cfg.keep_checkpoints)
        self.stages = [Stage(cfg.steps)]
        if cfg.hard_negatives:
            self.stages.append(Stage(cfg.stage2_steps, cfg.stage2_lr, "hard negatives"))

        self.slides = expand_slides(slides)
        self.annotations = pair_annotations(self.slides, annotations)
        log(f"training slides: {len(self.slides)} "
            f"({sum(a is not None for a in self.annotations)} with tumour annotations)")
        self.sampler = PatchSampler(load_candidates(self.slides, self.annotations),
                                    cfg.class_probs)
        log(f"candidates: {self.sampler.summary()['candidates']}, class probabilities "
            f"{self.sampler.class_probs}")
        if self.sampler.missing:
            log(f"warning: no candidates for {self.sampler.missing}; those classes are not "
                "sampled")

        # Validation: held-out slides when given, else a fixed unaugmented patch set from
        # the training slides (then it measures fit, not generalisation: said in the
        # model file).
        if val_slides:
            v_paths = expand_slides(val_slides)
            v_ann = pair_annotations(v_paths, val_annotations)
            v_sampler = PatchSampler(load_candidates(v_paths, v_ann), cfg.class_probs,
                                     jitter=True)
            val_source = "held-out slides"
        else:
            v_sampler, v_paths = self.sampler, []
            val_source = "training slides (no held-out slides given)"
        val_src = PatchBatchSource(v_sampler, cfg.batch_size, cfg.seed + 1, cfg.model_mpp,
                                   None)
        self.val_images, self.val_labels = read_fixed_set(val_src, cfg.val_patches, cfg.seed)
        log(f"validation: {len(self.val_labels)} patches from {val_source} "
            f"({int(self.val_labels.sum())} tumour)")
        self.base_extra = {"val_source": val_source, "val_slides": [str(p) for p in v_paths]}

        self.hard: dict[int, np.ndarray] = {}
        self.mining: dict | None = None
        self.hn_path = Path(out) / "hard_negatives.json"

    def build_model(self) -> torch.nn.Module:
        from ..models.scannet import ScanNetFCN

        model = ScanNetFCN(width=self.cfg.width).to(self.device)
        if self.cfg.init_model:
            _load_initial_weights(model, self.cfg)
            self.log(f"initial weights from {self.cfg.init_model}")
        return model

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        from .loop import make_optimizer

        c = self.cfg
        return make_optimizer(model, c.optimizer, c.lr, c.momentum, c.weight_decay)

    def batch_source(self, stage: int) -> object:
        from .patches import PatchBatchSource

        sampler = self.sampler
        if stage == 2:
            sampler = sampler.with_hard_negatives(self.hard, self.cfg.stage2_class_probs)
        return PatchBatchSource(sampler, self.cfg.batch_size, self.cfg.seed,
                                self.cfg.model_mpp, self.cfg.augment)

    def to_device(self, images: np.ndarray, labels: np.ndarray
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from .loop import to_input

        x = to_input(images, self.cfg.norm_mean, self.cfg.norm_std, self.device)
        return x, torch.from_numpy(labels).to(self.device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _loss(out, y, self.cfg)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        from .losses import patch_logits

        return float((patch_logits(out).argmax(1) == y).float().mean())

    def validate(self, model: torch.nn.Module) -> dict:
        return evaluate(model, self.val_images, self.val_labels, self.cfg, self.device)

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def model_config(self, extra: dict, final: bool = False) -> dict:
        # The final model says "mining": null when none ran; checkpoints name it only
        # once it has.
        mining = {"mining": self.mining} if self.mining or final else {}
        cfg = self.cfg
        return {
            "name": MODEL_NAME,
            "task": "metastases",
            "mpp": cfg.model_mpp,
            "class_names": ["normal", "tumour"],
            "normalisation": {"mean": list(cfg.norm_mean), "std": list(cfg.norm_std)},
            "seed": cfg.seed,
            "training": {
                "slides": [str(s) for s in self.slides],
                "annotations": [str(a) if a else None for a in self.annotations],
                "config": cfg.to_dict(),
                **self.base_extra, **extra, **mining,
            },
        }

    def between_stages(self, stage: int, model: torch.nn.Module) -> None:
        if stage == 1:
            self.hard, self.mining = self._mine(model)
            _save_hard_negatives(self.hn_path, self.hard, self.mining)

    def restore(self, stage: int) -> None:
        if stage == 2:
            self.hard, self.mining = _load_hard_negatives(self.hn_path)

    def _mine(self, model: torch.nn.Module) -> tuple[dict[int, np.ndarray], dict]:
        from ..engine.run import Normalisation
        from ..models.anchor import densify
        from .hard_negatives import mine_hard_negatives

        cfg = self.cfg
        model.eval()
        dense = densify(model, cfg.hnm_alpha).to(self.device).eval()
        norm = Normalisation(tuple(cfg.norm_mean), tuple(cfg.norm_std))
        t0 = time.perf_counter()
        hard, report = mine_hard_negatives(
            dense, self.sampler, cfg.model_mpp, threshold=cfg.hnm_threshold,
            alpha=cfg.hnm_alpha, margin_um=cfg.hnm_margin_um,
            max_per_slide=cfg.hnm_max_per_slide, normalisation=norm, device=self.device,
            progress=self.log,
        )
        model.train()
        mining = report.to_dict()
        mining["seconds"] = round(time.perf_counter() - t0, 2)
        mining["stage1_validation"] = self.validate(model)
        self.log(f"hard negative mining: {report.total_false_positives} false positives on "
                 f"normal tissue ({report.fp_per_slide:.1f} per slide), "
                 f"{sum(len(v) for v in hard.values())} added, {mining['seconds']} s")
        return hard, mining


def train_metastases(
    slides: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    annotations: Sequence[str | os.PathLike] | None = None,
    val_slides: Sequence[str | os.PathLike] | None = None,
    val_annotations: Sequence[str | os.PathLike] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a metastasis model into `out`; see the module docstring.

    `stop_after` ends the run after that many global steps (as if interrupted; the last
    checkpoint is written there), used to test and demonstrate resuming.
    """
    from .loop import fit

    t_start = time.perf_counter()
    cfg = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = MetastasisTraining(cfg, out, slides, annotations, val_slides, val_annotations, log)
    r = fit(task, out, resume=resume, progress=progress, log=log, stop_after=stop_after,
            started=t_start)
    return TrainResult(r.model_path, r.config_path, r.steps, r.metrics_csv, r.curve_png,
                       r.final_val, task.mining, r.seconds)


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
             cfg: TrainConfig, device: torch.device, batch: int = 32) -> dict:
    """Loss, accuracy (p > 0.5) and ROC AUC of `model` on a fixed patch set."""
    import torch

    from .loop import to_input
    from .losses import cross_entropy, patch_logits

    was_training = model.training
    model.eval()
    losses, probs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_input(images[i:i + batch], cfg.norm_mean, cfg.norm_std, device)
            y = torch.from_numpy(labels[i:i + batch]).to(device)
            out = model(x)
            losses.append(float(cross_entropy(out, y, cfg.class_weights)) * len(y))
            probs.append(torch.softmax(patch_logits(out).float(), 1)[:, 1].cpu().numpy())
    model.train(was_training)
    p = np.concatenate(probs) if probs else np.zeros(0)
    n = max(1, len(labels))
    return {"val_loss": sum(losses) / n, "val_accuracy": float(((p > 0.5) == labels).mean()),
            "val_auc": _patch_auc(labels, p)}


def _patch_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    from ..evaluation.auc import slide_auc

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return None  # a patch set of one class has no AUC
    if not np.all(np.isfinite(probs)):
        return float("nan")  # a diverged model: slide_auc refuses it, metrics.csv says nan
    return slide_auc(probs, y).auc


def _loss(output: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    import torch

    from .losses import cross_entropy, patch_logits

    if not cfg.label_smoothing:
        return cross_entropy(output, labels, cfg.class_weights)
    weight = (None if cfg.class_weights is None else
              torch.as_tensor(cfg.class_weights, dtype=torch.float32, device=output.device))
    return torch.nn.functional.cross_entropy(patch_logits(output), labels, weight=weight,
                                             label_smoothing=cfg.label_smoothing)


def _load_initial_weights(model: torch.nn.Module, cfg: TrainConfig) -> None:
    from ..models.io import load_model

    try:
        loaded, lcfg = load_model(cfg.init_model, device="cpu")
    except WsiDetectError:
        raise
    except Exception as exc:  # a bad path or file: say which
        raise WsiDetectError(f"cannot read the initial model {cfg.init_model}: {exc}") from exc
    if abs(float(lcfg.get("width", -1)) - cfg.width) > 1e-9:
        raise WsiDetectError(
            f"the initial model {cfg.init_model} has width {lcfg.get('width')}, the run "
            f"asks for {cfg.width}; use the same --width")
    model.load_state_dict(loaded.state_dict())


def _save_hard_negatives(path: Path, hard: dict[int, np.ndarray], mining: dict) -> None:
    from .checkpoints import write_json_atomic

    write_json_atomic(path, {"mining": mining,
                             "points": {str(k): np.round(v, 2).tolist() for k, v in hard.items()}})


def _load_hard_negatives(path: Path) -> tuple[dict[int, np.ndarray], dict | None]:
    if not path.is_file():
        raise WsiDetectError(
            f"{path} is missing: the checkpoint is in stage 2 (hard negatives) but the mined "
            "points are gone; resume is impossible, start again without --resume"
        )
    data = json.loads(path.read_text())
    hard = {int(k): np.asarray(v, np.float32).reshape(-1, 2) for k, v in data["points"].items()}
    return hard, data.get("mining")


__all__ = ["MODEL_NAME", "MetastasisTraining", "TrainConfig", "TrainResult",
           "evaluate", "parse_class_probs", "train_metastases"]
