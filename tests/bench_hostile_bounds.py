"""Bounds of the hostile-input corpus (issue 13): each case of tests/hostile_corpus.py
in its own process under an address-space limit, with its wall time and peak memory.

    OMP_NUM_THREADS=1 python tests/bench_hostile_bounds.py SCRATCH [--limit-gb 6]

A benchmark, not a test: it prints one row per case (seconds, peak RSS, verdict) and
the largest figures; a case that needs more than the limit fails with MemoryError or
is killed, which shows as a broken rule. Times include the process start (imports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_corpus as corpus  # noqa: E402


def _one(index: int, world: Path, folder: Path) -> None:
    c = corpus.CASES[index]
    o = corpus.run_case(c, corpus.world_at(world), folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: kB)
    print(json.dumps({"problems": o.problems, "seconds": o.seconds, "peak_mib": peak}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scratch", type=Path)
    ap.add_argument("--limit-gb", type=float, default=6.0)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help="run only cases whose id contains this")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds a case may run before it counts as unbounded")
    args = ap.parse_args()
    world = args.scratch / "world"
    if args.one is not None:
        _one(args.one, world, args.scratch / f"case{args.one:03d}")
        return 0
    if not (world / "good-run" / "summary.json").is_file():
        corpus.make_world(world)
    limit = int(args.limit_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    rows = []
    for i, c in enumerate(corpus.CASES):
        if args.only not in c.id:
            continue
        t = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, str(args.scratch), "--one", str(i)],
                capture_output=True, text=True, preexec_fn=cap, timeout=args.timeout,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired:
            out, err, code = "", "", "timeout"
        wall = time.perf_counter() - t
        try:
            r = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            why = (f"unbounded: still running after {args.timeout:g} s" if code == "timeout"
                   else f"process died ({code}): {err.strip()[-200:]}")
            r = {"problems": [why], "seconds": None, "peak_mib": None}
        rows.append((c.id, wall, r))
        verdict = "ok" if not r["problems"] else "; ".join(r["problems"])[:120]
        case_s = f"{r['seconds']:7.2f}" if r["seconds"] is not None else "      -"
        peak = f"{r['peak_mib']:7.0f}" if r["peak_mib"] is not None else "      -"
        print(f"{c.id:48s} process {wall:6.1f} s  case {case_s} s  peak {peak} MiB  {verdict}",
              flush=True)
    done = [r for r in rows if r[2]["seconds"] is not None] or [("-", 0, {"seconds": 0,
                                                                          "peak_mib": 0})]
    worst_t = max(done, key=lambda r: r[2]["seconds"])
    worst_m = max(done, key=lambda r: r[2]["peak_mib"])
    problems = [p for r in rows for p in r[2]["problems"]]
    print(f"\n{len(rows)} cases under a {args.limit_gb:g} GiB address-space limit; "
          f"{sum(bool(r[2]['problems']) for r in rows)} broke a rule "
          f"({sum(p.startswith('traceback') for p in problems)} tracebacks, "
          f"{sum(p.startswith(('changed', 'half-written')) for p in problems)} data loss, "
          f"{sum(p.startswith(('unbounded', 'process died')) for p in problems)} unbounded"
          f"/killed); slowest case {worst_t[0]} {worst_t[2]['seconds']:.1f} s; most "
          f"memory {worst_m[0]} {worst_m[2]['peak_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
