"""`wsi-detect bench backends`: the inference backends side by side, in one run.

For each bundled network (metastasis FCN at α = 1 and 2, SegMitos, H2G-Net's MobileNetV2
patch classifier) and each backend of models/backends.py: ms per ROI (best of
`--repeats` interleaved runs after a warm-up, on a phantom tissue ROI of the detector's
default CPU size), tissue Mpx/s (the level-0 area the ROI's map cells cover), the ratio
to torch fp32, GFLOP/s (analytic FLOPs of the convolutions, counted from the layer
shapes) against this CPU's float32 matmul GFLOP/s measured in the same run, max |Δp|
against fp32, and the one-off setup time (export, compile). Then the metastasis
detector on a whole phantom (`--size`, default 8192²; 20000² with `--size 20000 20000`)
with each backend: regions, FROC and max |Δp| of the whole map against fp32, tissue
Mpx/s. A backend whose package is missing is listed as "not installed". Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

# name -> (task, options); the bundled model of each task
NETWORKS = {"scannet-a1": ("metastases", {"alpha": 1}),
            "scannet-a2": ("metastases", {"alpha": 2}),
            "segmitos": ("mitoses", {}),
            "h2g-mobilenetv2": ("tumour", {})}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.backend_names import BACKENDS

    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                        metavar="NAME", help="backends to measure (default: all but "
                        "compile, whose first call takes minutes; name it to add it)")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS),
                        choices=list(NETWORKS), metavar="NET")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(8192, 8192), metavar=("W", "H"),
                        help="whole-phantom size (default 8192 8192)")
    parser.add_argument("--slide-alphas", type=int, nargs="*", default=[1, 2],
                        help="α of the whole-phantom metastasis runs (default 1 2; none = "
                             "skip)")
    parser.add_argument("--slide-repeats", type=int, default=1,
                        help="whole-phantom runs per backend, interleaved; the fastest is "
                             "reported (default 1)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the phantom is written once (default: the cache dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures here")


def conv_flops(module: Any, x: Any) -> int:
    """FLOPs (multiply-add = 2) of every Conv2d/Linear of `module` on `x`, from the output
    shapes seen by forward hooks: analytic, independent of the engine."""
    import torch
    from torch import nn

    total = [0]

    def hook(layer: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total[0] += 2 * out.numel() * layer.in_channels // layer.groups * k
        else:
            total[0] += 2 * out.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _roi_input(detector: Any, config: dict, options: dict) -> tuple[Any, float]:
    """(a normalised phantom tissue ROI of the detector's default CPU size, the level-0
    Mpx its map cells cover)."""
    import torch

    from ..engine.run import Normalisation
    from ..phantom import render_phantom_region

    g = detector.geometry((20000, 20000), config.get("mpp"), config, options)
    cells = detector.default_roi_cells("cpu", options)
    side = g.read_size(cells)
    rgb = render_phantom_region(4000, 4000, side, side, seed=1, size=(20000, 20000))
    norm = Normalisation.from_config(config)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last), cells * cells * g.cell_size0 ** 2 / 1e6


def measure_rois(names: list[str], backends: list[str], repeats: int) -> list[dict[str, Any]]:
    import torch

    from ..detectors import get_detector
    from ..models.anchor import DenseScanNet, dense_flops
    from ..models.backends import apply_backend, missing_packages, native_bf16
    from ..models.io import load_model
    from .scannet import _interleaved

    rows = []
    for net_name in names:
        task, opts = NETWORKS[net_name]
        det = get_detector(task)
        net, config = load_model(det.resolve_model("demo"), torch.device("cpu"))
        net = net.eval().to(memory_format=torch.channels_last)
        options = det.resolve_options(opts)
        ref_fwd = det.forward(net, config, options)
        x, mpx = _roi_input(det, config, options)
        if isinstance(ref_fwd, DenseScanNet):
            flops = dense_flops(net, x.shape[-2], x.shape[-1], ref_fwd.alpha)
        else:
            flops = conv_flops(ref_fwd.core_module(), x) if task == "mitoses" else None
        fns, setup = {}, {}
        for b in backends:
            if missing_packages(b):
                rows.append({"network": net_name, "backend": b, "status": "not installed"})
                continue
            t0 = time.perf_counter()
            fwd = apply_backend(ref_fwd, b)
            with torch.inference_mode():
                fwd(x)  # the first call compiles (OpenVINO per shape, torch.compile)
            setup[b] = time.perf_counter() - t0
            fns[b] = (lambda f, inp: lambda: f(inp))(fwd, x)
        with torch.inference_mode():
            times = _interleaved(fns, repeats)
            outs = {b: fn().float() for b, fn in fns.items()}
        if flops is None:  # H2G: patches of the ROI through the classifier
            flops = conv_flops(ref_fwd.core_module(), torch.zeros(
                1, 3, ref_fwd.patch, ref_fwd.patch)) * outs["fp32"].numel()
        base = times.get("fp32")
        for b in fns:
            rows.append({
                "network": net_name, "backend": b, "status": "ok",
                "roi_px": list(x.shape[-2:]), "ms_per_roi": times[b] * 1e3,
                "tissue_mpx_per_s": mpx / times[b],
                "ratio_vs_fp32": base / times[b] if base else float("nan"),
                "gflops": flops / times[b] / 1e9,
                "max_abs_dp": (outs[b] - outs["fp32"]).abs().max().item(),
                "setup_s": setup[b],
                "note": "" if b not in ("bf16", "openvino-bf16") or native_bf16()
                else "no native bf16 on this CPU"})
    return rows


def measure_slide(size: tuple[int, int], alphas: list[int], backends: list[str],
                  work: Path | None, repeats: int = 1) -> list[dict[str, Any]]:
    import numpy as np

    from ..demo import DEMO_SEED, froc_of_slide
    from ..detectors.job import DetectionRequest, detect
    from ..models.backends import backend_cache_dir, missing_packages
    from ..phantom import write_phantom
    from ..slide import open_slide
    from ..slide.tissue import compute_tissue_mask

    work = Path(work) if work is not None else backend_cache_dir().parent / "bench"
    path = work / f"phantom-{DEMO_SEED}-{size[0]}x{size[1]}.tif"
    if not path.exists():
        write_phantom(path, seed=DEMO_SEED, size=tuple(size))
    rows = []
    with open_slide(path) as slide:
        tissue = compute_tissue_mask(slide)
        for alpha in alphas:
            ref, best = None, {}
            for b in [b for _ in range(max(1, repeats)) for b in backends]:
                if missing_packages(b):
                    continue
                req = DetectionRequest(task="metastases", slide=str(path), device="cpu",
                                       backend=b, options={"alpha": alpha})
                t0 = time.perf_counter()
                res = detect(req, slide=slide, tissue_mask=tissue)
                wall = time.perf_counter() - t0
                heat = np.asarray(res.heatmap, dtype=np.float32)
                ref = heat if b == "fp32" else ref
                froc = froc_of_slide(path, res.regions, slide.mpp or 0.243)
                if b in best and best[b]["seconds"] <= wall:
                    continue
                best[b] = {
                    "alpha": alpha, "backend": b, "seconds": wall,
                    "inference_s": res.timings.get("inference_s"),
                    "tissue_mpx_per_s": res.timings.get("tissue_mpx_per_s"),
                    "regions": len(res.regions),
                    "froc": froc["score"] if froc else None,
                    "max_abs_dp_map": (float(np.nanmax(np.abs(heat - ref)))
                                       if ref is not None else None)}
            rows += list(best.values())
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..models.backend_names import BACKENDS
    from ..models.backends import cpu_flags, native_bf16, resolve_backend
    from .scannet import matmul_gflops

    backends = args.backends or [b for b in BACKENDS if b != "compile"]
    if "fp32" not in backends:
        backends = ["fp32", *backends]  # the reference of every ratio
    backends = ["fp32", *[b for b in backends if b != "fp32"]]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "native_bf16": native_bf16(),
        "amx": "amx_bf16" in cpu_flags(),
        "repeats": args.repeats,
    }
    r["auto"] = {t: resolve_backend("auto", "cpu", t) for t in ("metastases", "mitoses", "tumour")}
    r["matmul_gflops"] = matmul_gflops(args.repeats)
    r["rois"] = measure_rois(args.networks, backends, args.repeats)
    if args.slide_alphas:
        r["slide_size"] = list(args.size)
        r["slide_repeats"] = args.slide_repeats
        r["slide"] = measure_slide(tuple(args.size), args.slide_alphas, backends, args.work,
                                   args.slide_repeats)
    with open("/proc/loadavg") as f:
        r["load_after"] = f.read().split()[:3]
    return r


def report(r: dict[str, Any]) -> str:
    lines = [f"Inference backends  {r['date']}  torch {r['torch']}  {r['threads']} threads  "
             f"native bf16: {r['native_bf16']}",
             "auto -> " + ", ".join(f"{t}: {b}" for t, b in r["auto"].items()),
             f"load {' '.join(r['load_before'])} -> {' '.join(r['load_after'])}; "
             f"float32 matmul {r['matmul_gflops']:.1f} GFLOP/s; best of {r['repeats']}",
             "", f"{'network':16s} {'backend':17s} {'ms/ROI':>9s} {'Mpx/s':>7s} {'× fp32':>7s} "
             f"{'GFLOP/s':>8s} {'% mm':>5s} {'max|Δp|':>8s} {'setup':>7s}"]
    for o in r["rois"]:
        if o["status"] != "ok":
            lines.append(f"{o['network']:16s} {o['backend']:17s} {o['status']}")
            continue
        lines.append(
            f"{o['network']:16s} {o['backend']:17s} {o['ms_per_roi']:9.1f} "
            f"{o['tissue_mpx_per_s']:7.1f} {o['ratio_vs_fp32']:7.2f} {o['gflops']:8.1f} "
            f"{100 * o['gflops'] / r['matmul_gflops']:5.0f} {o['max_abs_dp']:8.1e} "
            f"{o['setup_s']:6.1f}s {o['note']}")
    if r.get("slide"):
        w, h = r["slide_size"]
        lines += ["", f"metastases on a {w}×{h} phantom (seed 9001), whole job per backend, "
                  f"best of {r.get('slide_repeats', 1)} interleaved",
                  f"{'α':>2s} {'backend':17s} {'seconds':>8s} {'Mpx/s':>7s} {'regions':>8s} "
                  f"{'FROC':>6s} {'max|Δp| map':>12s}"]
        for o in r["slide"]:
            froc = f"{o['froc']:.3f}" if o["froc"] is not None else "–"
            lines.append(f"{o['alpha']:2d} {o['backend']:17s} {o['seconds']:8.1f} "
                         f"{o['tissue_mpx_per_s'] or float('nan'):7.1f} {o['regions']:8d} "
                         f"{froc:>6s} {o['max_abs_dp_map']:12.1e}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    results = measure(args)
    print(report(results))
    if args.json is not None:
        from .._atomic import write_json_atomic

        write_json_atomic(args.json, results)
    return 0
