"""The training loop every task shares: stages, prefetching, step, metrics, validation,
checkpoints and exact resume.

A task (metastases, later mitoses and tumour) supplies a `TrainingTask`: its model, the
batch source of each stage, its loss and validation, its model-file config and what
happens between stages (hard-negative mining for metastases). `fit` runs it into `OUT`:

- `OUT/metrics.csv`, `OUT/learning_curve.png`, `OUT/<task.name>.safetensors` + `.json`;
- `OUT/checkpoints/` (training/checkpoints.py), every `checkpoint_every` steps, at the
  end of each stage before `between_stages` runs, and where a run stops early.

Exact resume rests on two things: a batch is a pure function of (seed, step) (the batch
source and the Prefetcher's `start_step`), and the checkpoint restores every RNG. A
resumed run therefore sees the same batches and the same dropout as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import WsiDetectError
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, seed_everything
from .metrics import MetricsLog, metric_fields, plot_learning_curve
from .prefetch import Prefetcher


@dataclass(frozen=True)
class Stage:
    steps: int
    # Set on entering the stage, also after a resume (the checkpoint holds the lr the
    # optimiser had, which may be the previous stage's); None keeps the optimiser's.
    lr: float | None = None
    label: str = ""  # marks the stage's start on the learning curve


@dataclass(frozen=True)
class LoopSettings:
    seed: int = 0
    workers: int = 1  # prefetching producer processes; 0 reads in the training loop
    queue_size: int = 4
    val_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2


class TrainingTask(Protocol):
    """What a task gives the loop. Stages are numbered from 1."""

    name: str  # model file stem in OUT
    title: str  # learning-curve title
    loss_label: str
    val_fields: Sequence[str]  # the keys `validate` returns (metrics.csv columns)
    stages: Sequence[Stage]
    settings: LoopSettings
    device: torch.device

    def build_model(self) -> torch.nn.Module: ...

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...

    def batch_source(self, stage: int) -> Any:
        """A picklable `prefetch.BatchSource`: make_batch(step) -> (images, labels), a
        pure function of (seed, step)."""

    def to_device(self, images: np.ndarray, labels: np.ndarray
                  ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float: ...

    def validate(self, model: torch.nn.Module) -> dict: ...

    def model_config(self, extra: dict, final: bool = False) -> dict:
        """The model file's config; `extra` goes into its "training" entry."""

    def config_dict(self) -> dict:
        """The run's settings as JSON, recorded in each checkpoint's state.json."""

    def between_stages(self, stage: int, model: torch.nn.Module) -> None:
        """After `stage` ends (its checkpoint is written), before `stage + 1` starts."""

    def restore(self, stage: int) -> None:
        """After resuming inside `stage`: reload what `between_stages` made before it."""


@dataclass
class FitResult:
    model_path: Path
    config_path: Path
    steps: int
    metrics_csv: Path
    curve_png: Path | None
    final_val: dict
    seconds: float


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
             device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 normalised, on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def make_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise WsiDetectError(f"unknown optimiser {name!r}: use 'sgd' or 'adam'")


def fit(task: TrainingTask, out: Path, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, stop_after: int | None = None,
        started: float | None = None) -> FitResult:
    """Train (or resume) `task` into `out`.

    `stop_after` ends the run after that many global steps, as if interrupted (a
    checkpoint is written there). `started` (a `time.perf_counter()` value) is where the
    run's clock starts, so the task's data set-up counts in time_s.
    """
    from ..models.io import save_model

    t_start = time.perf_counter() if started is None else started
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = task.settings
    ends = np.cumsum([s.steps for s in task.stages]).tolist()  # global step at each end
    total = ends[-1] if ends else 0

    seed_everything(cfg.seed)  # before build_model: the initial weights depend on it
    model = task.build_model()
    model.train()
    opt = task.make_optimizer(model)
    ckpt_root = out / "checkpoints"
    step, stage = 0, 1
    if resume:
        ck = latest_checkpoint(out)
        if ck is None:
            log(f"no checkpoint in {ckpt_root}; starting from scratch")
        else:
            state = load_checkpoint(ck, model, opt)
            step, stage = int(state["step"]), int(state["stage"])
            log(f"resumed from {ck.name}: step {step}, stage {stage}")
            task.restore(stage)
    metrics = MetricsLog(out / "metrics.csv", metric_fields(task.val_fields),
                         step if resume else None)

    def ckpt() -> None:
        save_checkpoint(ckpt_root, step, stage, model, opt, task.model_config({}),
                        {"config": task.config_dict()}, keep=cfg.keep_checkpoints)

    end = total if stop_after is None else min(total, stop_after)
    bar = _progress_bar(total, step, progress)
    val_last: dict = {}
    try:
        while step < end:
            if step >= ends[stage - 1]:
                if stage == len(ends):
                    break
                ckpt()  # the finished stage's model, safe before between_stages
                task.between_stages(stage, model)
                stage += 1
                continue
            spec = task.stages[stage - 1]
            stop = min(end, ends[stage - 1])
            if spec.lr is not None:
                for group in opt.param_groups:
                    group["lr"] = spec.lr
            source = task.batch_source(stage)
            with Prefetcher(source, cfg.workers, cfg.queue_size, start_step=step) as pf:
                while step < stop:
                    t0 = time.perf_counter()
                    w0 = pf.wait_time
                    x, y = task.to_device(*pf.get())
                    outp = model(x)
                    loss = task.loss(outp, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        acc = task.accuracy(outp, y)
                    step += 1
                    row = {"step": step, "stage": stage, "loss": round(loss.item(), 6),
                           "accuracy": round(acc, 4), "lr": opt.param_groups[0]["lr"],
                           "data_wait_s": round(pf.wait_time - w0, 4),
                           "step_s": round(time.perf_counter() - t0, 4),
                           "time_s": round(time.perf_counter() - t_start, 2)}
                    if step % cfg.val_every == 0 or step in ends:
                        val_last = task.validate(model)
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
        val_last = task.validate(model)
    marks = [(start, s.label or f"stage {i + 2}")
             for i, (start, s) in enumerate(zip(ends[:-1], task.stages[1:], strict=True))
             if step > start]
    curve = plot_learning_curve(out / "metrics.csv", out / "learning_curve.png", marks,
                                title=task.title, loss_label=task.loss_label)
    final = {"final_validation": val_last, "steps_done": step}
    weights, cfg_json = save_model(model, out / task.name, task.model_config(final, final=True))
    seconds = time.perf_counter() - t_start
    log(f"model written to {weights} after {step} steps ({seconds:.0f} s); "
        f"validation {val_last}")
    return FitResult(weights, cfg_json, step, out / "metrics.csv", curve, val_last, seconds)


def _progress_bar(total: int, initial: int, enabled: bool) -> object | None:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


__all__ = ["FitResult", "LoopSettings", "Stage", "TrainingTask", "fit", "make_optimizer",
           "to_input"]
