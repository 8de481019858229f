"""`wsi-detect demo`: phantom slide → bundled model → outputs, overview PNG and FROC."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..demo import DEMO_SEED, DEMO_SIZE

    p = sub.add_parser("demo", help="run the bundled model on a phantom slide, end to end")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed (test set)")
    p.add_argument("--size", type=int, nargs=2, default=DEMO_SIZE, metavar=("W", "H"))
    p.add_argument("--model", default="demo", help="model name or file (default: bundled)")
    p.add_argument("--alpha", type=int, default=2, choices=(1, 2, 4))
    p.add_argument("--device", default="auto")
    p.add_argument("--napari", action="store_true", help="open the result in napari")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ._common import progress_bar

    bar, update = progress_bar(quiet=False, desc="demo")
    try:
        outcome = run_demo(args.out, seed=args.seed, size=tuple(args.size), model=args.model,
                           alpha=args.alpha, device=args.device, progress=update)
    finally:
        bar.close()
    print(f"slide:        {outcome.slide_path}")
    print(f"slide score:  {outcome.slide_score:.4f}")
    print(f"regions:      {outcome.n_regions}")
    if outcome.froc:
        sens = ", ".join(f"{k}: {v:.2f}" for k, v in outcome.froc["sensitivities"].items())
        print(f"FROC:         {outcome.froc['score']:.4f}  (sensitivity at FP/slide {sens})")
        print(f"lesions:      {outcome.froc['n_lesions']} (+{outcome.froc['n_itc']} ITC ignored)")
    print(f"outputs:      {outcome.out_dir / 'run'} (heatmap.zarr, regions.geojson, summary.json)")
    print(f"overview:     {outcome.overview_png}")
    print(f"took {outcome.seconds:.1f} s")
    if args.napari:
        from .._napari.demo_viewer import show_demo

        show_demo(outcome)
    return 0
