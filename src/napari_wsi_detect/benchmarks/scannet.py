"""`wsi-detect bench scannet`: Fast ScanNet speed, measured side by side in one run.

Same ROI, same random weights, same threads for every row:

* dense anchor layers (α = 2) vs patch-wise classification at stride 16 (paper: 195×).
  Patch-wise on all ~27 000 patches of a 2884² ROI would take a long time, so a random
  sample of patches is timed and the per-patch time extrapolated (the output says so);
* α = 2 vs α = 1 on ROIs giving the same stitched area (paper: 1.10);
* shift-and-stitch vs anchor layers at α = 2 (paper: 3.65×; ideal 4×);
* achieved GFLOP/s of the dense FCN (analytic FLOPs / time) vs the float32 matmul
  GFLOP/s of this machine measured in the same run;
* the CPU options (threads, inference_mode, channels_last, oneDNN, bf16, TorchScript
  freeze), each against the same baseline, with the bf16 probability error.

Timings are the best of `--repeats` interleaved runs after one warm-up run. Nothing here asserts
a time; tests only run `--quick` as a smoke test.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAPER = {"patchwise_speedup": 195.0, "alpha_cost_ratio": 1.10, "sas_speedup": 3.65}


# = models.scannet.DEFAULT_CPU_WIDTH (tested); not imported so that building the CLI
# parser does not import torch.
DEFAULT_CPU_WIDTH = 0.125


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=float, default=DEFAULT_CPU_WIDTH,
                        help=f"channel width multiplier (default {DEFAULT_CPU_WIDTH}; "
                             "1.0 = full VGG16)")
    parser.add_argument("--roi", type=int, default=2884,
                        help="ROI side in px for α = 2 (default 2884 = 166 cells)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per row, interleaved; the best is reported")
    parser.add_argument("--patches", type=int, default=64,
                        help="patches timed for the patch-wise baseline (extrapolated)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch.get_num_threads())")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default) or this process's CPU time; with "
                             "--threads 1, cpu is robust to other processes sharing the "
                             "cores (OpenMP spin-waits inflate it with more threads)")
    parser.add_argument("--no-cpu-options", action="store_true",
                        help="skip the CPU optimisation table")
    parser.add_argument("--quick", action="store_true",
                        help="small ROI (724), 1 repeat, 8 patches, no TorchScript: "
                             "a < 1 min smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda: on CUDA every time waits for the GPU "
                             "(synchronize) and runs in true fp32 (TF32 off); no CPU options")
    parser.add_argument("--seed", type=int, default=0)


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    return _interleaved({"f": fn}, repeats)["f"]


_CLOCK: list[Callable[[], float]] = [time.perf_counter]


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best (minimum) time of each function, timed in turn A B C A B C ...: on a shared
    machine the load drifts, interleaving spreads the drift over all rows alike, and the
    minimum is the run least disturbed by other processes (as `timeit` advises)."""
    for fn in fns.values():
        fn()  # warm-up: oneDNN builds its kernels for each new shape on the first call
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            clock = _CLOCK[0]
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: min(ts) for name, ts in times.items()}


def _synced(fn: Callable[[], Any], device: Any) -> Callable[[], Any]:
    """`fn` that returns only when the device is done (CUDA runs asynchronously)."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


def matmul_gflops(repeats: int = 3, n: int = 2048, device: Any = "cpu") -> float:
    """float32 GFLOP/s of torch.mm on n×n matrices: this machine's attainable peak-ish."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = _best_time(_synced(lambda: torch.mm(a, b), torch.device(device)), max(5, repeats))
    return 2 * n**3 / t / 1e9


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..models.anchor import (
        classify_patches,
        dense_flops,
        densify,
        input_size,
        output_size,
        shift_and_stitch,
    )
    from ..models.device import fp32_exact, resolve_device
    from ..models.scannet import PATCH, ScanNetFCN

    dev = resolve_device(getattr(args, "device", "cpu"))
    if args.quick:
        args.roi, args.repeats, args.patches = min(args.roi, 724), 1, min(args.patches, 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    _CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    alpha = 2
    cells = output_size(args.roi, alpha)
    if cells < 2:
        raise SystemExit(f"--roi {args.roi} is too small: need at least {input_size(2, 2)}")
    if cells % 2:  # same stitched area at α = 1 needs an even number of α = 2 cells
        cells -= 1
    roi = input_size(cells, alpha)
    roi1 = input_size(cells // 2, 1)

    torch.manual_seed(args.seed)
    model = ScanNetFCN(width=args.width).eval().to(dev)
    x = torch.rand(1, 3, roi, roi).to(dev)
    x1 = x[..., :roi1, :roi1].contiguous()
    dense2, dense1 = densify(model, alpha), densify(model, 1)
    r: dict[str, Any] = {
        "width": args.width, "roi": roi, "roi_alpha1": roi1, "cells": cells,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "clock": args.clock,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
    }
    flops2 = dense_flops(model, roi, roi, alpha)
    flops1 = dense_flops(model, roi1, roi1, 1)
    r["gflop_dense_a2"], r["gflop_dense_a1"] = flops2 / 1e9, flops1 / 1e9

    g = torch.Generator().manual_seed(args.seed)
    n_pos = min(args.patches, cells * cells)
    idx = torch.randperm(cells * cells, generator=g)[:n_pos].tolist()
    s = 32 // alpha
    positions = [((i // cells) * s, (i % cells) * s) for i in idx]
    with torch.inference_mode(), fp32_exact(dev):
        r["matmul_gflops"] = matmul_gflops(args.repeats, device=dev)
        t = _interleaved({name: _synced(fn, dev) for name, fn in {
            "dense2": lambda: dense2(x),
            "dense1": lambda: dense1(x1),
            "sas": lambda: shift_and_stitch(model, x, alpha),
            "patch": lambda: classify_patches(model, x, positions, batch_size=16),
        }.items()}, args.repeats)
    t2, t1, tsas, tp = t["dense2"], t["dense1"], t["sas"], t["patch"]
    per_patch = tp / n_pos
    r.update({
        "t_dense_a2_s": t2, "t_dense_a1_s": t1, "t_shift_stitch_a2_s": tsas,
        "t_patch_s": per_patch, "patches_timed": n_pos,
        "t_patchwise_extrapolated_s": per_patch * cells * cells,
        "patch_gflop": dense_flops(model, PATCH, PATCH, 1) / 1e9,
    })
    # The work each method must do, from the layer shapes alone: the speed-up a method
    # would show if every FLOP ran at the same rate.
    sas_flops = sum(
        dense_flops(model, input_size(len(range(i, cells, alpha))),
                    input_size(len(range(j, cells, alpha))), 1)
        for i in range(alpha) for j in range(alpha)
    )
    r["flop_ratio_patchwise"] = r["patch_gflop"] * 1e9 * cells * cells / flops2
    r["flop_ratio_alpha"] = flops2 / flops1
    r["flop_ratio_sas"] = sas_flops / flops2
    r["patchwise_speedup"] = r["t_patchwise_extrapolated_s"] / t2
    r["alpha_cost_ratio"] = t2 / t1
    r["sas_speedup"] = tsas / t2
    r["gflops_dense_a2"] = flops2 / t2 / 1e9
    r["gflops_patchwise"] = r["patch_gflop"] / per_patch
    r["efficiency_vs_matmul"] = r["gflops_dense_a2"] / r["matmul_gflops"]
    if not args.no_cpu_options and dev.type == "cpu":
        r["cpu_options"] = cpu_options(model, x, alpha, args.repeats, with_jit=not args.quick)
    return r


def cpu_options(model, x, alpha: int, repeats: int, with_jit: bool = True
                ) -> list[dict[str, Any]]:
    """Dense α=2 under each CPU option, against the plain baseline (NCHW fp32 under
    no_grad, all threads, oneDNN on); the last-but-one row is what `densify` does by
    default. max |Δp| is against the float32 baseline."""
    import torch

    from ..models.anchor import densify

    threads = torch.get_num_threads()
    nchw = densify(model, alpha, channels_last=False)
    default = densify(model, alpha)
    half = densify(model, alpha, bf16=True)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def no_grad(net):
        def f():
            with torch.no_grad():
                return net(x)
        return f

    def inference(net, inp=x):
        def f():
            with torch.inference_mode():
                return net(inp)
        return f

    def one_thread():
        torch.set_num_threads(1)
        try:
            return inference(default)()
        finally:
            torch.set_num_threads(threads)

    def no_onednn():
        with torch.backends.mkldnn.flags(enabled=False):
            return inference(nchw)()

    def cl_weights_too():
        model.to(memory_format=torch.channels_last)
        try:
            return inference(default, x_cl)()
        finally:
            model.to(memory_format=torch.contiguous_format)

    options: dict[str, tuple[Callable[[], Any], str]] = {
        f"baseline: NCHW fp32, no_grad, {threads} threads": (no_grad(nchw), ""),
        "torch.inference_mode": (inference(nchw), ""),
        "oneDNN off (torch.backends.mkldnn)": (no_onednn, "what oneDNN gives"),
        "channels_last input + inference_mode": (inference(default), "densify default"),
        "channels_last input and weights": (cl_weights_too, ""),
        "default path, torch.set_num_threads(1)": (one_thread, ""),
        "bf16 autocast + channels_last": (inference(half), "densify(bf16=True)"),
    }
    notes: dict[str, str] = {}
    if with_jit:
        import warnings

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                frozen = torch.jit.freeze(torch.jit.trace(default, x).eval())
                build = time.perf_counter() - t0
            options["torch.jit.trace + freeze (channels_last)"] = (
                inference(frozen), f"+{build:.1f} s to trace/freeze, per input shape")
        except Exception as exc:  # report, don't die: it is one optional row
            notes["torch.jit.trace + freeze"] = f"failed: {type(exc).__name__}: {exc}"
    times = _interleaved({name: fn for name, (fn, _) in options.items()}, repeats)
    with torch.no_grad():
        reference = nchw(x)
    rows = []
    for name, (fn, note) in options.items():
        err = (fn().float() - reference).abs().max().item()
        rows.append({"option": name, "time_s": times[name], "max_abs_prob_diff": err,
                     "note": note})
    for name, note in notes.items():
        rows.append({"option": name, "time_s": float("nan"), "max_abs_prob_diff": float("nan"),
                     "note": note})
    return rows


def _fmt_s(t: float) -> str:
    return f"{t:8.3f} s" if t < 100 else f"{t / 60:7.1f} min"


def report(r: dict[str, Any]) -> str:
    lines = [
        f"Fast ScanNet benchmark  width={r['width']}  device={r.get('device', 'cpu')}  "
        f"threads={r['threads']}  "
        f"torch {r['torch']}  best of {r['repeats']} interleaved run(s), {r['clock']} clock",
        f"ROI {r['roi']}² at α=2 -> {r['cells']}×{r['cells']} cells at stride 16 "
        f"({r['gflop_dense_a2']:.1f} GFLOP); α=1 ROI {r['roi_alpha1']}² -> "
        f"{r['cells'] // 2}² cells at stride 32, same stitched area "
        f"({r['gflop_dense_a1']:.1f} GFLOP)",
        "",
        f"{'method':44s} {'time':>10s}  {'ratio':>9s}  {'paper':>7s}  {'FLOP ratio':>10s}",
        f"{'dense anchor layers α=2':44s} {_fmt_s(r['t_dense_a2_s'])}  {'1.00':>9s}",
        f"{'dense α=1 (same stitched area)':44s} {_fmt_s(r['t_dense_a1_s'])}  "
        f"{1 / r['alpha_cost_ratio']:9.2f}",
        f"{'  cost ratio α=2 / α=1':44s} {'':10s}  {r['alpha_cost_ratio']:9.2f}  "
        f"{PAPER['alpha_cost_ratio']:7.2f}  {r['flop_ratio_alpha']:10.2f}",
        f"{'shift-and-stitch α=2 (4 FCN runs)':44s} {_fmt_s(r['t_shift_stitch_a2_s'])}  "
        f"{r['sas_speedup']:8.2f}×  {PAPER['sas_speedup']:6.2f}×  {r['flop_ratio_sas']:9.2f}×",
        f"{'patch-wise stride 16 (EXTRAPOLATED)':44s} "
        f"{_fmt_s(r['t_patchwise_extrapolated_s'])}  {r['patchwise_speedup']:8.1f}×  "
        f"{PAPER['patchwise_speedup']:6.0f}×  {r['flop_ratio_patchwise']:9.1f}×",
        f"  patch-wise: {r['patches_timed']} random patches timed, "
        f"{r['t_patch_s'] * 1e3:.2f} ms/patch × {r['cells'] ** 2} patches",
        "",
        f"dense α=2: {r['gflops_dense_a2']:.1f} GFLOP/s achieved; patch-wise "
        f"{r['gflops_patchwise']:.1f} GFLOP/s; float32 matmul on this machine "
        f"{r['matmul_gflops']:.1f} GFLOP/s -> dense FCN at "
        f"{100 * r['efficiency_vs_matmul']:.0f} % of matmul",
    ]
    if r.get("cpu_options"):
        base = r["cpu_options"][0]["time_s"]
        lines += ["", "CPU options, dense α=2 on the same ROI (speed-up vs baseline)",
                  f"{'option':44s} {'time':>10s}  {'speed-up':>8s}  {'max |Δp|':>9s}  note"]
        for o in r["cpu_options"]:
            lines.append(f"{o['option']:44s} {_fmt_s(o['time_s'])}  "
                         f"{base / o['time_s']:7.2f}×  {o['max_abs_prob_diff']:9.2e}  "
                         f"{o['note']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    results = measure(args)
    print(report(results))
    if args.json is not None:
        from .._atomic import write_json_atomic

        write_json_atomic(args.json, results)
    return 0
