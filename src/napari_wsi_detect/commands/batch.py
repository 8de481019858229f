"""`wsi-detect batch SLIDES_OR_FOLDERS... --task T --out DIR`: a cohort on dask.

`--task` choices and the detector flags (`--alpha`, `--threshold`, ...) come from the
detector registry (a flag of another task than the chosen one is refused). Prints the
dashboard address, a progress bar over slides with an ETA, one line per failed slide,
the report's tally and, with --truth, the cohort evaluation.

Exit codes: 0 every slide done or skipped; 1 at least one slide failed (the others
finished; the report says why each failed); 2 the cohort could not start (bad flag,
model, path or output folder, a scheduler out of reach, the folder locked by another
batch); 130 cancelled (Ctrl-C: rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from ._common import add_backend_argument, cancel_on_sigint, positive_int


def _memory_arg(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        value = int(parse_bytes(text))
    except (ValueError, TypeError):
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 4GiB or 8GB, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from ..detectors import available

    detectors = available()
    p = sub.add_parser(
        "batch", help="run a detector on many slides (dask.distributed)",
        description="Run one detector on every slide, one dask task per slide: a "
                    "LocalCluster by default, or an existing scheduler. Writes "
                    "DIR/<slide>/ per slide and DIR/report.csv + report.json. Exit code "
                    "0: all done or skipped; 1: some slides failed; 2: could not start; "
                    "130: cancelled (rerun to resume). See docs/batch.md.")
    p.add_argument("slides", nargs="+", metavar="SLIDE_OR_FOLDER",
                   help="slide files, or folders of them (one level deep; masks left out)")
    p.add_argument("--task", required=True, choices=[d.task for d in detectors])
    p.add_argument("--out", required=True, metavar="DIR", help="cohort output folder")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing dask scheduler (tcp://host:8786); default: a "
                        "LocalCluster on this machine")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: cores, or GPUs with "
                        "--device cuda, at most one per slide)")
    p.add_argument("--memory-limit", type=_memory_arg, default=None, metavar="SIZE",
                   help="LocalCluster memory limit per worker (e.g. 6GiB; default 90 %% "
                        "of RAM / workers)")
    p.add_argument("--truth", nargs="+", default=None, metavar="DIR_OR_FILE",
                   help="ground truth (masks / annotations, or folders): evaluate the "
                        "cohort at the end")
    p.add_argument("--unmatched-are-normal", action="store_true",
                   help="with --truth: slides without ground truth are normal")
    p.add_argument("--model", default=None,
                   help="'demo' (bundled, the default) or a model file NAME.safetensors / "
                        "NAME.json on storage the workers share")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda (one slide per GPU, via dask resources)")
    add_backend_argument(p)
    p.add_argument("--roi-cells", type=positive_int, default=None, metavar="T")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B")
    p.add_argument("--readers", type=positive_int, default=2,
                   help="slide reader threads per worker (default 2)")
    p.add_argument("--no-tissue-mask", action="store_true",
                   help="analyse background too")
    seen: dict[str, Any] = {}
    for det in detectors:
        for param in det.all_params():
            if param.key in seen:
                continue
            seen[param.key] = param
            unit = f" {param.unit}" if param.unit else ""
            p.add_argument(param.flag, dest=param.key, default=None,
                           metavar=param.key.upper(),
                           help=f"{param.help} ({det.task}; default "
                                f"{param.format(param.default)}{unit})")
    p.add_argument("--overwrite", action="store_true",
                   help="discard slide outputs made with another model or settings")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again slides that failed in the previous run of DIR (by "
                        "default they are not while their file is unchanged)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, param_keys=tuple(seen), param_flags={
        k: v.flag for k, v in seen.items()})


def _values(args: argparse.Namespace, det: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from ..detectors.params import ParamError

    mine = {p.key: p for p in det.all_params()}
    for key in args.param_keys:
        if getattr(args, key) is not None and key not in mine:
            raise ParamError(f"{args.param_flags[key]} does not apply to --task {det.task}")
    values = {k: p.validate(getattr(args, k)) for k, p in mine.items()
              if getattr(args, k) is not None}
    return ({k: v for k, v in values.items() if mine[k].stage == "run"},
            {k: v for k, v in values.items() if mine[k].stage != "run"})


def run(args: argparse.Namespace) -> int:
    import threading

    from ..batch.evaluate import describe
    from ..batch.run import run_batch
    from ..detectors import get_detector

    det = get_detector(args.task)
    options, params = _values(args, det)
    cancel = threading.Event()
    bar = None

    def on_event(kind: str, data: dict[str, Any]) -> None:
        nonlocal bar
        say = bar.write if bar is not None else (lambda m: print(m, file=sys.stderr))
        if kind == "cluster" and bar is not None and bar.n:
            # Skipped slides came back at once: restart the clock so the ETA is the
            # rate of slides that do run.
            done = bar.n
            bar.reset(total=bar.total)
            bar.initial = bar.n = bar.last_print_n = done
            bar.refresh()
        if kind == "cluster":
            where = "local cluster" if data["local"] else "scheduler"
            say(f"{where}: {data['scheduler']}, {data['workers']} workers"
                + (f" x {data['torch_threads']} torch threads" if data["torch_threads"]
                   else "")
                + (f", {data['memory_limit_bytes'] / 2**30:.1f} GiB each"
                   if data["memory_limit_bytes"] else ""))
            say(f"dashboard: {data['dashboard']}" if data["dashboard"]
                else "; ".join(data["notes"]) or "dashboard: not available")
        elif kind == "slide":
            if data["status"] == "failed":
                when = " (in the previous run; not retried)" if data.get("previous") else ""
                say(f"failed{when}: {data['slide']}: {data.get('error')}")
            if bar is not None and data["status"] != "pending":
                bar.update(1)

    if not args.quiet:
        from tqdm import tqdm

        # total is set once the cohort is known (the first rows are skipped ones).
        bar = tqdm(total=None, unit="slide", file=sys.stderr, dynamic_ncols=True,
                   desc="batch", smoothing=0.1)
    previous = cancel_on_sigint(cancel, bar)
    try:
        from ..batch.cohort import find_slides

        if bar is not None:
            bar.total = len(find_slides(args.slides))
            bar.refresh()
        report = run_batch(
            args.slides, args.task, args.out, scheduler=args.scheduler,
            workers=args.workers, truth=args.truth, model=args.model or det.default_model,
            device=args.device, backend=args.backend, options=options, params=params,
            roi_cells=args.roi_cells,
            batch_size=args.batch_size, n_readers=args.readers,
            use_tissue=not args.no_tissue_mask, overwrite=args.overwrite,
            memory_limit=args.memory_limit, unmatched_are_normal=args.unmatched_are_normal,
            retry_failed=args.retry_failed, cancel=cancel, on_event=on_event)
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    print(report.note())
    for line in describe(report.evaluation) if report.evaluation else ():
        print(line)
    print(f"report: {report.out / 'report.csv'}, report.json")
    if report.exit_code == 130:
        print("wsi-detect: cancelled; run the same command again to resume", file=sys.stderr)
    return report.exit_code
