"""Training the Fast ScanNet metastasis classifier (METHODS §1 (5)).

Stage 1 trains the no-padding VGG FCN on 244×244 patches drawn with set class
probabilities, augmented on the fly by prefetching producer processes. Stage 2 (with
`hard_negatives`) runs the stage-1 model densely over the training slides, adds its false
positives on normal tissue as a `hard` class, and trains on.

Everything a run needs to continue lives in `OUT/checkpoints/step-NNNNNN/`:
`model.safetensors` + `model.json` (models.io), `optimizer.safetensors` (every optimiser
and RNG tensor), `state.json` (step, stage, optimiser scalars and param groups). No
pickle anywhere. Batches are a pure function of (seed, step), so a resumed run sees the
same batches and, with the restored RNG (dropout), produces the same losses as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import AnnotationError, WsiDetectError
from .augment import AugmentConfig
from .losses import cross_entropy, patch_logits
from .patches import PatchBatchSource, read_fixed_set
from .prefetch import Prefetcher
from .sampler import PatchSampler, SlideCandidates, build_candidates
from .truth import find_annotation, load_truth

MODEL_NAME = "metastases"
SLIDE_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide"}
METRIC_FIELDS = ["step", "stage", "loss", "accuracy", "lr", "data_wait_s", "step_s",
                 "val_loss", "val_accuracy", "val_auc", "time_s"]


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in the model's JSON)."""

    width: float = 0.125
    steps: int = 1000  # stage 1
    hard_negatives: bool = False
    hard_negative_steps: int = 0  # stage 2; 0 with hard_negatives → steps // 2
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"  # or "adam"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    class_probs: dict = field(default_factory=lambda: {"normal": 0.5, "tumour": 0.5})
    stage2_class_probs: dict = field(
        default_factory=lambda: {"normal": 0.25, "hard": 0.25, "tumour": 0.5})
    class_weights: list | None = None
    workers: int = 1
    queue_size: int = 4
    seed: int = 0
    model_mpp: float = 0.243
    val_every: int = 100
    val_patches: int = 128
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    hnm_threshold: float = 0.5
    hnm_alpha: int = 2
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
    device: str = "auto"
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


# --- data set-up ----------------------------------------------------------------------


def expand_slides(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Slide files from files and folders (a folder contributes its slide files, leaving
    out tumour-mask images)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir()
                if f.suffix.lower() in SLIDE_SUFFIXES and "mask" not in f.name.lower()
            )
            if not found:
                raise WsiDetectError(f"folder {p} holds no slide files ({', '.join(sorted(SLIDE_SUFFIXES))})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise WsiDetectError(f"training slide {p} does not exist")
    if not out:
        raise WsiDetectError("no training slides were given")
    return out


def pair_annotations(slides: Sequence[Path], annotations: Sequence[str | os.PathLike] | None
                     ) -> list[Path | None]:
    """The annotation of each slide: one file per slide in order, or looked up by name in
    the given folders / beside the slide (Camelyon16 layout). A slide named `tumor_*`
    without one is an error; `normal_*` and other slides without one are normal."""
    annotations = [Path(a) for a in (annotations or [])]
    files = [a for a in annotations if a.is_file()]
    folders = [a for a in annotations if a.is_dir()]
    missing = [a for a in annotations if not a.exists()]
    if missing:
        raise AnnotationError(f"annotation path {missing[0]} does not exist")
    if files and not folders:
        if len(files) != len(slides):
            raise AnnotationError(
                f"{len(files)} annotation files for {len(slides)} slides: give one per slide "
                "in the same order, or a folder with <slide name>.xml/.geojson/.json files"
            )
        return list(files)
    out: list[Path | None] = []
    for s in slides:
        ann = find_annotation(s, folders)
        if ann is None and s.stem.lower().startswith("tumo"):
            raise AnnotationError(
                f"{s.name} looks like a tumour slide but no annotation "
                f"({s.stem}.xml/.geojson/.json) was found beside it or in "
                f"{', '.join(map(str, folders)) or 'the annotation folders'}"
            )
        out.append(ann)
    return out


def load_candidates(slides: Sequence[Path], annotations: Sequence[Path | None]
                    ) -> list[SlideCandidates]:
    from ..slide import open_slide

    cands = []
    for s, a in zip(slides, annotations, strict=True):
        size = None
        if a is not None and a.suffix.lower() not in {".xml", ".json", ".geojson"}:
            with open_slide(s) as sl:
                size = sl.dimensions
        cands.append(build_candidates(s, load_truth(a, size)))
    return cands


# --- reproducibility --------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    # Our own code draws from explicit Generators; the legacy global states are seeded
    # (and checkpointed) only for third-party code that might use them.
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002
    torch.manual_seed(seed)


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
             device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 normalised, on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise WsiDetectError(f"unknown optimiser {cfg.optimizer!r}: use 'sgd' or 'adam'")


# --- checkpoints (safetensors + JSON, never pickle) --------------------------------------


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state into tensors (for safetensors) and JSON scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(ckpt_root: Path, step: int, stage: int, model: torch.nn.Module,
                    opt: torch.optim.Optimizer, model_config: dict, extra: dict,
                    keep: int = 2) -> Path:
    from safetensors.torch import save_file

    from ..models.io import save_model

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tmp / "model", model_config)
    tensors, meta = optimizer_to_files(opt)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "stage": stage, "optimizer": meta,
             "python_random": _py_random_state(), "numpy_random": _np_random_state(), **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a checkpoint appears whole or not at all
    _write_json_atomic(ckpt_root / "latest.json", {"step": step, "path": final.name})
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _py_random_state() -> list:
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]


def _np_random_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / json.loads(pointer.read_text())["path"]
    return path if path.is_dir() else None


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
                    ) -> dict:
    """Restore model, optimiser and RNG state in place; return state.json."""
    from safetensors.torch import load_file

    from ..models.io import load_model

    loaded, _ = load_model(path / "model.json", device="cpu")
    model.load_state_dict(loaded.state_dict())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state = json.loads((path / "state.json").read_text())
    optimizer_from_files(opt, tensors, state["optimizer"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = state["python_random"]
    random.setstate((v, tuple(internal), gauss))
    npst = state["numpy_random"]
    legacy = (npst["name"], np.array(npst["keys"], np.uint32), npst["pos"],
              npst["has_gauss"], npst["cached"])
    np.random.set_state(legacy)  # noqa: NPY002
    return state


# --- evaluation helpers ------------------------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Rank-based ROC AUC (ties count half); None when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
             device: torch.device, batch: int = 32) -> dict:
    was_training = model.training
    model.eval()
    losses, probs = [], []
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
            "val_auc": roc_auc(labels, p)}


# --- outputs ---------------------------------------------------------------------------


def plot_learning_curve(metrics_csv: Path, out_png: Path, stage2_start: int | None = None
                        ) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(metrics_csv.open()))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    val = [(int(r["step"]), float(r["val_loss"]), float(r["val_accuracy"]))
           for r in rows if r.get("val_loss")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(step, loss, color="0.75", lw=0.8, label="train loss (batch)")
    k = max(1, len(loss) // 25)
    if len(loss) >= k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1:], smooth, color="C0", lw=1.6, label=f"train loss ({k}-step mean)")
    if val:
        vs, vl, va = map(np.array, zip(*val, strict=True))
        ax.plot(vs, vl, "o-", color="C1", label="validation loss")
        ax2 = ax.twinx()
        ax2.plot(vs, va, "s--", color="C2", label="validation accuracy")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("validation accuracy")
        ax2.legend(loc="upper right", fontsize=8)
    if stage2_start is not None:
        ax.axvline(stage2_start, color="k", ls=":", lw=1)
        ax.text(stage2_start, ax.get_ylim()[1], " hard negatives", va="top", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Fast ScanNet metastasis training")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


class _Metrics:
    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows = []
        if resume_step is not None and path.is_file():
            # Drop rows after the checkpoint: those steps are recomputed (identically).
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._f = path.open("a", newline="")
        self._w = csv.DictWriter(self._f, METRIC_FIELDS)

    def write(self, row: dict) -> None:
        self._w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_FIELDS})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def model_config(cfg: TrainConfig, slides: Sequence[Path], annotations: Sequence[Path | None],
                 extra: dict | None = None) -> dict:
    return {
        "name": MODEL_NAME,
        "task": "metastases",
        "mpp": cfg.model_mpp,
        "class_names": ["normal", "tumour"],
        "normalisation": {"mean": list(cfg.norm_mean), "std": list(cfg.norm_std)},
        "seed": cfg.seed,
        "training": {
            "slides": [str(s) for s in slides],
            "annotations": [str(a) if a else None for a in annotations],
            "config": cfg.to_dict(),
            **(extra or {}),
        },
    }


# --- the run ---------------------------------------------------------------------------


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
    checkpoint is written there) — used to test and demonstrate resuming.
    """
    from ..models.device import resolve_device
    from ..models.io import save_model
    from ..models.scannet import ScanNetFCN

    t_start = time.perf_counter()
    cfg = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)

    slide_paths = expand_slides(slides)
    ann_paths = pair_annotations(slide_paths, annotations)
    log(f"training slides: {len(slide_paths)} "
        f"({sum(a is not None for a in ann_paths)} with tumour annotations)")
    cands = load_candidates(slide_paths, ann_paths)
    sampler = PatchSampler(cands, cfg.class_probs)
    log(f"candidates: {sampler.summary()['candidates']}, class probabilities "
        f"{sampler.class_probs}")
    if sampler.missing:
        log(f"warning: no candidates for {sampler.missing}; those classes are not sampled")

    # Validation: held-out slides when given, else a fixed unaugmented patch set from the
    # training slides (then it measures fit, not generalisation: said in the metrics).
    if val_slides:
        v_paths = expand_slides(val_slides)
        v_ann = pair_annotations(v_paths, val_annotations)
        v_sampler = PatchSampler(load_candidates(v_paths, v_ann), cfg.class_probs, jitter=True)
        val_source_desc = "held-out slides"
    else:
        v_sampler, v_paths = sampler, []
        val_source_desc = "training slides (no held-out slides given)"
    val_src = PatchBatchSource(v_sampler, cfg.batch_size, cfg.seed + 1, cfg.model_mpp, None)
    val_images, val_labels = read_fixed_set(val_src, cfg.val_patches, cfg.seed)
    log(f"validation: {len(val_labels)} patches from {val_source_desc} "
        f"({int(val_labels.sum())} tumour)")

    seed_everything(cfg.seed)
    model = ScanNetFCN(width=cfg.width).to(device)
    if cfg.init_model:
        _load_initial_weights(model, cfg)
        log(f"initial weights from {cfg.init_model}")
    model.train()
    opt = make_optimizer(model, cfg)
    ckpt_root = out / "checkpoints"
    step, stage = 0, 1
    hard: dict[int, np.ndarray] = {}
    mining: dict | None = None
    hn_path = out / "hard_negatives.json"
    base_extra = {"val_source": val_source_desc,
                  "val_slides": [str(p) for p in v_paths]}
    if resume:
        ck = latest_checkpoint(out)
        if ck is None:
            log(f"no checkpoint in {ckpt_root}; starting from scratch")
        else:
            state = load_checkpoint(ck, model, opt)
            step, stage = int(state["step"]), int(state["stage"])
            log(f"resumed from {ck.name}: step {step}, stage {stage}")
            if stage == 2:
                hard, mining = _load_hard_negatives(hn_path)
    metrics = _Metrics(out / "metrics.csv", step if resume else None)

    def current_sampler() -> PatchSampler:
        if stage == 2:
            return sampler.with_hard_negatives(hard, cfg.stage2_class_probs)
        return sampler

    def ckpt() -> None:
        extra = {"mining": mining} if mining else {}
        save_checkpoint(ckpt_root, step, stage, model,
                        opt, model_config(cfg, slide_paths, ann_paths, {**base_extra, **extra}),
                        {"config": cfg.to_dict()}, keep=cfg.keep_checkpoints)

    total = cfg.total_steps
    end = total if stop_after is None else min(total, stop_after)
    bar = _progress_bar(total, step, progress)
    val_last: dict = {}
    try:
        while step < end:
            if stage == 1 and step >= cfg.steps:
                if not cfg.hard_negatives:
                    break
                ckpt()  # the stage-1 model, safe before mining
                hard, mining = _mine(model, sampler, cfg, device, log, val_images, val_labels)
                _save_hard_negatives(hn_path, hard, mining)
                stage = 2
                continue
            stage_end = cfg.steps if stage == 1 else total
            stop = min(end, stage_end)
            if stage == 2 and cfg.stage2_lr is not None:
                for group in opt.param_groups:  # also after a resume (state holds the lr)
                    group["lr"] = cfg.stage2_lr
            source = PatchBatchSource(current_sampler(), cfg.batch_size, cfg.seed,
                                      cfg.model_mpp, cfg.augment)
            with Prefetcher(source, cfg.workers, cfg.queue_size, start_step=step) as pf:
                while step < stop:
                    t0 = time.perf_counter()
                    w0 = pf.wait_time
                    images, labels = pf.get()
                    x = to_input(images, cfg.norm_mean, cfg.norm_std, device)
                    y = torch.from_numpy(labels).to(device)
                    outp = model(x)
                    loss = _loss(outp, y, cfg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        acc = float((patch_logits(outp).argmax(1) == y).float().mean())
                    step += 1
                    row = {"step": step, "stage": stage, "loss": round(loss.item(), 6),
                           "accuracy": round(acc, 4), "lr": opt.param_groups[0]["lr"],
                           "data_wait_s": round(pf.wait_time - w0, 4),
                           "step_s": round(time.perf_counter() - t0, 4),
                           "time_s": round(time.perf_counter() - t_start, 2)}
                    if step % cfg.val_every == 0 or step == total or step == cfg.steps:
                        val_last = evaluate(model, val_images, val_labels, cfg, device)
                        row.update({k: (None if v is None else round(v, 5))
                                    for k, v in val_last.items()})
                    metrics.write(row)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{row['loss']:.3f}", stage=stage)
                    if step % cfg.checkpoint_every == 0:
                        ckpt()
        if step < total:
            ckpt()  # stopped early: make the exact point resumable
    finally:
        metrics.close()
        if bar is not None:
            bar.close()

    if not val_last:
        val_last = evaluate(model, val_images, val_labels, cfg, device)
    curve = plot_learning_curve(out / "metrics.csv", out / "learning_curve.png",
                                cfg.steps if cfg.hard_negatives and step > cfg.steps else None)
    extra = {**base_extra, "final_validation": val_last, "steps_done": step,
             "mining": mining}
    weights, cfg_json = save_model(model, out / MODEL_NAME,
                                   model_config(cfg, slide_paths, ann_paths, extra))
    seconds = time.perf_counter() - t_start
    log(f"model written to {weights} after {step} steps ({seconds:.0f} s); "
        f"validation {val_last}")
    return TrainResult(weights, cfg_json, step, out / "metrics.csv", curve, val_last, mining,
                       seconds)


def _loss(output: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
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


def _progress_bar(total: int, initial: int, enabled: bool) -> object | None:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _mine(model: torch.nn.Module, sampler: PatchSampler, cfg: TrainConfig,
          device: torch.device, log: Callable[[str], None], val_images: np.ndarray,
          val_labels: np.ndarray) -> tuple[dict[int, np.ndarray], dict]:
    from ..engine.run import Normalisation
    from ..models.anchor import densify
    from .hard_negatives import mine_hard_negatives

    model.eval()
    dense = densify(model, cfg.hnm_alpha).to(device).eval()
    norm = Normalisation(tuple(cfg.norm_mean), tuple(cfg.norm_std))
    t0 = time.perf_counter()
    hard, report = mine_hard_negatives(
        dense, sampler, cfg.model_mpp, threshold=cfg.hnm_threshold, alpha=cfg.hnm_alpha,
        margin_um=cfg.hnm_margin_um, max_per_slide=cfg.hnm_max_per_slide,
        normalisation=norm, device=device, progress=log,
    )
    model.train()
    mining = report.to_dict()
    mining["seconds"] = round(time.perf_counter() - t0, 2)
    mining["stage1_validation"] = evaluate(model, val_images, val_labels, cfg, device)
    log(f"hard negative mining: {report.total_false_positives} false positives on normal "
        f"tissue ({report.fp_per_slide:.1f} per slide), "
        f"{sum(len(v) for v in hard.values())} added, {mining['seconds']} s")
    return hard, mining


def _save_hard_negatives(path: Path, hard: dict[int, np.ndarray], mining: dict) -> None:
    _write_json_atomic(path, {"mining": mining,
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


__all__ = ["TrainConfig", "TrainResult", "train_metastases", "expand_slides",
           "pair_annotations", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "plot_learning_curve", "evaluate", "roc_auc"]
