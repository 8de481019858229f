"""Training H2G-Net (METHODS §3): `wsi-detect train tumour`.

Three stages of the shared loop (training/loop.py) on one `H2GNet`:

1. warm-up: the MobileNetV2 patch classifier with plain cross-entropy on patches from
   the hierarchical sampler (training/tumour_data.py), augmented as the paper (flips,
   90° rotations, HSV shift ±20, brightness ×[0.8, 1.2]);
2. CWCE: the frozen warm-up network (or another pluggable extractor, training/cwce.py)
   gives deep features of a patch sample → standardise, PCA 95 %, k-means k = 10; then
   training goes on with the cross-entropy macro-averaged over the clusters in the batch;
3. refinement: the stage-1 model maps every training slide through the detection job
   (the very forward the detector runs); low-resolution image + heatmap at
   `refine_size`² (detectors/tumour_refine.refine_input, the detector's own function)
   train the U-Net (soft Dice + BCE) on augmented crops (flips, rotations, zoom, Macenko
   stain).

What stage 2 and 3 need from the stage before (extractor, clusters, refinement inputs)
is written to OUT before the next stage starts and reloaded on resume, so resuming is
exact (a batch is a pure function of (seed, step); the checkpoint restores every RNG).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .tumour_data import PatchAugment, RefineAugment

if TYPE_CHECKING:
    import torch

MODEL_NAME = "tumour"


def _flag(default: object, text: str, **cli: object) -> Any:
    return field(default=default, metadata={"help": text, **cli})


@dataclass
class TumourTrainConfig:
    """Everything that decides a tumour training run (recorded in the model's JSON)."""

    width: float = _flag(0.35, "MobileNetV2 width multiplier")
    unet_width: int = _flag(8, "channels of the U-Net's first level")
    refine_size: int = _flag(1024, "refinement input side (px)")
    patch: int = _flag(256, "stage-1 patch side (model px)")
    model_mpp: float = _flag(1.0, "µm/px the patch classifier works at (10x)")
    warmup_steps: int = _flag(100, "stage-1 warm-up steps (plain cross-entropy)", min=1)
    steps: int = _flag(250, "stage-1 steps with the cluster-guided loss", min=1)
    refine_steps: int = _flag(150, "U-Net refinement steps", min=1)
    batch_size: int = _flag(12, "patches per step", min=1)
    refine_batch_size: int = _flag(2, "refinement crops per step", min=1)
    refine_crop: int = _flag(384, "refinement training crop side (px)")
    lr: float = _flag(1e-3, "learning rate (Adam)")
    refine_lr: float = _flag(1e-3, "U-Net learning rate")
    clusters: int = _flag(10, "k-means clusters of the cluster-guided loss")
    pca_variance: float = 0.95
    cluster_patches: int = _flag(480, "patches whose features define the clusters")
    cluster_features: str = _flag(
        "warmup", "feature extractor for the clusters: warmup (this run's warm-up "
                  "network), scannet:MODEL, or none (plain cross-entropy)")
    workers: int = _flag(1, "prefetching producer processes (0 = read in the loop)")
    queue_size: int = _flag(4, "batches prefetched at most")
    seed: int = _flag(0, "seed of weights, batches and augmentation")
    val_every: int = _flag(100, "validate every N steps")
    val_patches: int = _flag(96, "validation patches")
    checkpoint_every: int = _flag(50, "checkpoint every N steps")
    keep_checkpoints: int = 2
    device: str = _flag("auto", "auto, cpu, cuda, cuda:1, mps")
    augment: PatchAugment = field(default_factory=PatchAugment)
    refine_augment: RefineAugment = field(default_factory=RefineAugment)
    norm_mean: tuple = (0.5, 0.5, 0.5)
    norm_std: tuple = (0.25, 0.25, 0.25)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["norm_mean"], d["norm_std"] = list(self.norm_mean), list(self.norm_std)
        return d


@dataclass
class TumourTrainResult:
    model_path: Path
    config_path: Path
    steps: int
    metrics_csv: Path
    curve_png: Path | None
    final_val: dict
    seconds: float


def slide_group(path: Path) -> str:
    """The sampler's top level: the slide's folder name (e.g. one folder per scan
    resolution or tissue family)."""
    return Path(path).parent.name or "slides"


class TumourTraining:
    """The tumour `TrainingTask` (training/loop.py); see the module docstring."""

    name = MODEL_NAME
    title = "H2G-Net tumour segmentation training"
    loss_label = "CE / CWCE / Dice+BCE"
    val_fields = ("val_loss", "val_accuracy", "val_auc", "val_dice", "val_dice_stage1")

    def __init__(self, cfg: TumourTrainConfig, out: Path, slides: Sequence[str | os.PathLike],
                 annotations: Sequence[str | os.PathLike] | None = None,
                 val_slides: Sequence[str | os.PathLike] | None = None,
                 val_annotations: Sequence[str | os.PathLike] | None = None,
                 log: Callable[[str], None] = print) -> None:
        from ..models.device import resolve_device
        from .loop import LoopSettings, Stage
        from .slides import expand_slides, pair_annotations
        from .tumour_data import HierarchicalSampler, TumourPatchSource, build_tumour_slide

        self.cfg, self.out, self.log = cfg, Path(out), log
        self.device = resolve_device(cfg.device)
        self.settings = LoopSettings(cfg.seed, cfg.workers, cfg.queue_size, cfg.val_every,
                                     cfg.checkpoint_every, cfg.keep_checkpoints)
        self.stages = [Stage(cfg.warmup_steps, cfg.lr, "warm-up"),
                       Stage(cfg.steps, cfg.lr, "CWCE"),
                       Stage(cfg.refine_steps, cfg.refine_lr, "refinement")]

        def load(paths: Sequence[Any], anns: Sequence[Any] | None) -> tuple[list, list]:
            files = expand_slides(paths)
            pairs = pair_annotations(files, anns)
            return files, [build_tumour_slide(f, a, slide_group(f), cfg.patch, cfg.model_mpp)
                           for f, a in zip(files, pairs, strict=True)]

        self.slides, tslides = load(slides, annotations)
        self.train_anns = [s.annotation for s in tslides]
        self.sampler = HierarchicalSampler(tslides)
        log(f"training slides: {len(self.slides)}; {self.sampler.summary()}")
        if val_slides:
            self.val_paths, vslides = load(val_slides, val_annotations)
            self.val_anns = [s.annotation for s in vslides]
            v_sampler, self.val_source = HierarchicalSampler(vslides), "held-out slides"
        else:
            self.val_paths, self.val_anns, v_sampler = [], [], self.sampler
            self.val_source = "training slides (no held-out slides given)"
        src = TumourPatchSource(v_sampler, cfg.val_patches, cfg.seed + 1, cfg.patch,
                                cfg.model_mpp, None)
        src.open()
        self.val_images, self.val_labels = src.make_batch(0)
        src.close()
        log(f"validation: {len(self.val_labels)} patches from {self.val_source} "
            f"({int(self.val_labels.sum())} tumour)")
        self.extractor: Any = None
        self.cluster_model: Any = None
        self.stage = 1
        self.refine_dir = self.out / "refine"

    # -- the loop's hooks --------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        from ..models.h2g import H2GNet

        c = self.cfg
        return H2GNet(width=c.width, unet_width=c.unet_width, refine_size=c.refine_size,
                      patch=c.patch).to(self.device)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr)

    def batch_source(self, stage: int) -> object:
        from .tumour_data import RefineBatchSource, TumourPatchSource

        self.stage = stage
        c = self.cfg
        if stage < 3:
            return TumourPatchSource(self.sampler, c.batch_size, c.seed, c.patch,
                                     c.model_mpp, c.augment)
        groups = json.loads((self.refine_dir / "groups.json").read_text())["train"]
        return RefineBatchSource(str(self.refine_dir / "train_inputs.npy"),
                                 str(self.refine_dir / "train_truths.npy"), groups,
                                 c.refine_batch_size, c.refine_crop, c.seed,
                                 c.refine_augment)

    def to_device(self, images: np.ndarray, labels: np.ndarray
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from .loop import to_input

        if self.stage == 3:
            return (torch.from_numpy(images).to(self.device),
                    torch.from_numpy(labels).to(self.device))
        x = to_input(images, self.cfg.norm_mean, self.cfg.norm_std, self.device)
        y = torch.from_numpy(labels).to(self.device)
        if self.stage == 2 and self.cluster_model is not None:
            feats = self.extractor(x).float().cpu().numpy()
            k = torch.from_numpy(self.cluster_model.assign(feats)).to(self.device)
            y = torch.stack([y, k], dim=1)
        return x, y

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        from .cwce import cwce_loss

        if out.dim() == 4:  # refinement: soft Dice + BCE per pixel
            p = out[:, 0].sigmoid()
            inter = (p * y).sum()
            soft_dice = 1 - (2 * inter + 1) / (p.sum() + y.sum() + 1)
            return soft_dice + F.binary_cross_entropy_with_logits(out[:, 0], y)
        if y.dim() == 2:
            return cwce_loss(out, y[:, 0], y[:, 1])
        return F.cross_entropy(out, y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        if out.dim() == 4:
            return float(((out[:, 0] > 0) == (y > 0.5)).float().mean())
        labels = y[:, 0] if y.dim() == 2 else y
        return float((out.argmax(1) == labels).float().mean())

    def validate(self, model: torch.nn.Module) -> dict:
        import torch
        import torch.nn.functional as F

        from .loop import to_input
        from .metastases import _patch_auc

        was = model.training
        model.eval()
        probs, losses = [], []
        with torch.no_grad():
            for i in range(0, len(self.val_images), 32):
                x = to_input(self.val_images[i:i + 32], self.cfg.norm_mean,
                             self.cfg.norm_std, self.device)
                y = torch.from_numpy(self.val_labels[i:i + 32]).to(self.device)
                logits = model(x)
                losses.append(float(F.cross_entropy(logits, y)) * len(y))
                probs.append(torch.softmax(logits.float(), 1)[:, 1].cpu().numpy())
            p = np.concatenate(probs)
            out = {"val_loss": sum(losses) / max(1, len(p)),
                   "val_accuracy": float(((p > 0.5) == self.val_labels).mean()),
                   "val_auc": _patch_auc(self.val_labels, p),
                   "val_dice": None, "val_dice_stage1": None}
            vx = self.refine_dir / "val_inputs.npy"
            if self.stage == 3 and vx.is_file():
                out.update(self._refine_dice(model, np.load(vx),
                                             np.load(self.refine_dir / "val_truths.npy")))
        model.train(was)
        return out

    def _refine_dice(self, model: Any, inputs: np.ndarray, truths: np.ndarray) -> dict:
        import torch

        from ..detectors.tumour_refine import dice

        d1, d2 = [], []
        for x, t in zip(inputs, truths, strict=True):
            p = torch.sigmoid(model(torch.from_numpy(x[None].astype(np.float32))
                                    .to(self.device)))[0, 0].cpu().numpy()
            d2.append(dice(p >= 0.5, t > 0))
            d1.append(dice(x[3] >= 0.5, t > 0))
        return {"val_dice": float(np.mean(d2)), "val_dice_stage1": float(np.mean(d1))}

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    def model_config(self, extra: dict, final: bool = False) -> dict:
        c = self.cfg
        return {
            "name": MODEL_NAME, "task": "tumour", "mpp": c.model_mpp,
            "class_names": ["non-tumour", "tumour"],
            "normalisation": {"mean": list(c.norm_mean), "std": list(c.norm_std)},
            "thresholds": {"threshold": 0.5, "min_area_um2": 0.0},
            "seed": c.seed,
            "training": {
                "slides": [str(s) for s in self.slides],
                "val_slides": [str(s) for s in self.val_paths], "val_source": self.val_source,
                "config": c.to_dict(),
                "cluster_features": c.cluster_features,
                **extra,
            },
        }

    def between_stages(self, stage: int, model: torch.nn.Module) -> None:
        if stage == 1:
            self._fit_clusters(model)
        elif stage == 2:
            self._refine_data(model)

    def restore(self, stage: int) -> None:
        import torch

        from ..models.io import load_model
        from .cwce import ClusterModel, make_extractor

        if stage == 2 and self.cfg.cluster_features != "none":
            self.cluster_model = ClusterModel.load(self.out / "clusters.json")
            # Building a network draws its initial weights from torch's global generator,
            # which the checkpoint has just restored: fork it, or dropout would differ.
            with torch.random.fork_rng(devices=[]):
                if self.cfg.cluster_features == "warmup":
                    net, _ = load_model(self.out / "cluster-extractor.json", self.device)
                    self.extractor = make_extractor("warmup", net.patch_net, self.device)
                else:
                    self.extractor = make_extractor(self.cfg.cluster_features, None,
                                                    self.device)

    # -- between stages ------------------------------------------------------------------------
    def _fit_clusters(self, model: torch.nn.Module) -> None:
        import torch

        from ..models.io import save_model
        from .cwce import fit_clusters, make_extractor
        from .loop import to_input
        from .tumour_data import TumourPatchSource

        c = self.cfg
        if c.cluster_features == "none":
            self.log("CWCE off (cluster_features=none): stage 2 uses plain cross-entropy")
            return
        t0 = time.perf_counter()
        if c.cluster_features == "warmup":
            frozen = copy.deepcopy(model).eval()
            save_model(frozen, self.out / "cluster-extractor", self.model_config({}))
            self.extractor = make_extractor("warmup", frozen.patch_net, self.device)
        else:
            with torch.random.fork_rng(devices=[]):  # as in `restore`
                self.extractor = make_extractor(c.cluster_features, None, self.device)
        src = TumourPatchSource(self.sampler, c.cluster_patches, c.seed + 2, c.patch,
                                c.model_mpp, None)
        src.open()
        images, _ = src.make_batch(0)
        src.close()
        feats = []
        with torch.no_grad():
            for i in range(0, len(images), 32):
                x = to_input(images[i:i + 32], c.norm_mean, c.norm_std, self.device)
                feats.append(self.extractor(x).float().cpu().numpy())
        self.cluster_model = fit_clusters(np.concatenate(feats), c.clusters, c.pca_variance,
                                          c.seed)
        self.cluster_model.save(self.out / "clusters.json")
        sizes = np.bincount(self.cluster_model.assign(np.concatenate(feats)),
                            minlength=c.clusters)
        self.log(f"clusters: {c.clusters} on {self.cluster_model.components.shape[1]} PCA "
                 f"components ({100 * self.cluster_model.explained:.1f} % variance), sizes "
                 f"{sizes.tolist()}, {time.perf_counter() - t0:.0f} s")

    def _refine_data(self, model: torch.nn.Module) -> None:
        from .tumour_maps import refinement_set

        t0 = time.perf_counter()
        self.refine_dir.mkdir(parents=True, exist_ok=True)
        model.eval()
        groups = {}
        sets = [("train", self.slides, self.train_anns)]
        if self.val_paths:
            sets.append(("val", self.val_paths, self.val_anns))
        for name, paths, anns in sets:
            x, t = refinement_set(model, self.cfg, paths, anns, self.device, self.log)
            np.save(self.refine_dir / f"{name}_inputs.npy", x)
            np.save(self.refine_dir / f"{name}_truths.npy", t)
            groups[name] = [slide_group(p) for p in paths]
        from .checkpoints import write_json_atomic

        write_json_atomic(self.refine_dir / "groups.json", groups)
        model.train()
        self.log(f"refinement inputs of {sum(len(v) for v in groups.values())} slides, "
                 f"{time.perf_counter() - t0:.0f} s")


def train_tumour(slides: Sequence[str | os.PathLike], out: str | os.PathLike,
                 config: TumourTrainConfig | None = None,
                 annotations: Sequence[str | os.PathLike] | None = None,
                 val_slides: Sequence[str | os.PathLike] | None = None,
                 val_annotations: Sequence[str | os.PathLike] | None = None,
                 resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, stop_after: int | None = None
                 ) -> TumourTrainResult:
    """Train (or resume) an H2G-Net tumour model into `out` (module docstring)."""
    from .loop import fit

    t_start = time.perf_counter()
    cfg = config or TumourTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = TumourTraining(cfg, out, slides, annotations, val_slides, val_annotations, log)
    r = fit(task, out, resume=resume, progress=progress, log=log, stop_after=stop_after,
            started=t_start)
    return TumourTrainResult(r.model_path, r.config_path, r.steps, r.metrics_csv,
                             r.curve_png, r.final_val, r.seconds)


__all__ = ["MODEL_NAME", "TumourTrainConfig", "TumourTrainResult", "TumourTraining",
           "slide_group", "train_tumour"]
