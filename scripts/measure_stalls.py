"""Event-loop stalls a user feels while the "Detect metastases" widget runs.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/measure_stalls.py \
        ../shared/data/slides/cmu-1-small-region.svs [--moves 0.3 0.9 0.5] [--json OUT]

Opens SLIDE in a *shown* napari viewer, docks `DetectMetastasesWidget`, presses its Detect
button with a real mouse click (`QTest.mouseClick`), waits in the real Qt event loop until
the run and its regions are done, then drags the threshold slider to each `--moves`
value (a few slider ticks 30 ms apart, as a hand would) and waits for the regions.

A `QTimer` ticks every 5 ms on the main thread; a gap between two ticks is the time the
event loop could not answer the user. A watchdog thread samples the main thread's Python
stack whenever it has not ticked for 40 ms, so each stall is attributed to the code that
was running (the deepest napari-wsi-detect frame and the deepest napari/vispy frame).

Printed per phase ("run start": click to heatmap layer on screen; "tiles": until the run
and its first regions are done; "slider i": each move until its regions are drawn):
p50 / p99 / max gap, the number of gaps over 100 ms, and the longest stall's culprit.
The widget's own per-event timings (`callback_s`, `max_swap_s`) are printed when it has
them. Nothing here depends on widget internals beyond `detect_button` and a threshold
control found by `find_threshold_control` (adapt that helper when the widget changes).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

STALL_SAMPLE_S = 0.040  # sample the main thread's stack once it has not ticked this long
TICK_MS = 5


# --- adapt these to the widget ------------------------------------------------------------
def find_threshold_control(widget: Any) -> Any:
    """The visible QSlider of the probability threshold (a QDoubleSpinBox or QSlider
    reached through whatever the widget calls it), so the script moves what a user moves."""
    from qtpy.QtWidgets import QAbstractSlider, QAbstractSpinBox, QLabel, QWidget

    for name in ("threshold", "probability", "threshold_control"):
        ctl = getattr(widget, name, None)
        if ctl is None:
            continue
        ctl = getattr(ctl, "native", ctl)  # magicgui widgets wrap a Qt widget
        inner = getattr(ctl, "slider", None)
        if isinstance(inner, QAbstractSlider):
            return inner
        if isinstance(ctl, (QAbstractSlider, QAbstractSpinBox)):
            return ctl
        found = ctl.findChildren(QAbstractSlider) if isinstance(ctl, QWidget) else []
        if found:
            return found[0]
    # Schema-built form: the slider in the row whose label says "probability"/"threshold".
    for label in widget.findChildren(QLabel):
        text = label.text().lower()
        buddy = label.buddy()
        if buddy is not None and ("probab" in text or "threshold" in text):
            found = buddy.findChildren(QAbstractSlider)
            return found[0] if found else buddy
    raise SystemExit("measure_stalls: no threshold control found on the widget; adapt "
                     "find_threshold_control")


def set_control_value(ctl: Any, value: float, steps: int = 6, pause_s: float = 0.03,
                      wait: Any = None) -> None:
    """Move a QSlider (ticks) or spin box to `value` in `steps` moves, like a drag."""
    from qtpy.QtWidgets import QAbstractSlider

    if isinstance(ctl, QAbstractSlider):
        lo, hi = ctl.minimum(), ctl.maximum()
        # Our FloatSlider maps 0..1 to ticks; a generic slider gets value as a fraction.
        target = int(round(lo + value * (hi - lo))) if hi - lo > 1 else int(value)
        start = ctl.value()
        for k in range(1, steps + 1):
            ctl.setValue(int(round(start + (target - start) * k / steps)))
            if wait is not None:
                wait(pause_s)
    else:
        ctl.setValue(value)


def tiles_done(widget: Any) -> int:
    """ROIs finished so far, read from the widget's status text ("ROI k of n")."""
    import re

    from qtpy.QtWidgets import QLabel

    for label in widget.findChildren(QLabel):
        m = re.search(r"ROI (\d+) of \d+", label.text())
        if m:
            return int(m.group(1))
    return 0


def region_count(widget: Any) -> Any:
    """Number of detections shown (whatever the widget calls its result)."""
    state = getattr(widget, "_current_state", None)
    result = getattr(state(), "result", None) if callable(state) else None
    if result is not None and getattr(result, "detections", None) is not None:
        return len(result.detections)
    regions = getattr(widget, "_regions", None)
    return len(regions) if regions is not None else "?"


def zoom_screenshot(viewer: Any, screenshot: Any, wait: Any, factor: float = 8.0) -> None:
    """A picture zoomed `factor` x on the biggest result shape (edge width on screen must
    stay the same as at whole-slide zoom), then back to the whole slide."""
    from napari.layers import Shapes

    shapes = [ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.nshapes]
    if not shapes:
        return
    layer = shapes[-1]
    biggest = max(layer.data, key=len)
    centre = layer.data_to_world(np.asarray(biggest)[:, -2:].mean(axis=0))
    camera = getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera
    zoom = camera.zoom
    camera.center = tuple(centre[-2:])
    camera.zoom = zoom * factor
    wait(0.5)
    screenshot("zoomed-in")
    viewer.reset_view()
    wait(0.3)


def widget_busy(widget: Any) -> bool:
    """True while a run, a post-processing worker or a debounce timer is pending."""
    if getattr(widget, "running", False) or getattr(widget, "postprocessing", False):
        return True
    debounce = getattr(widget, "_debounce", None)
    return bool(debounce is not None and debounce.isActive())


# --- measurement -------------------------------------------------------------------------
class GapRecorder:
    """5 ms QTimer on the main thread + a stack-sampling watchdog thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.phase = "setup"
        self.gaps: list[tuple[str, float, float]] = []  # (phase, start, seconds)
        self.samples: dict[float, list[tuple[str, str]]] = collections.defaultdict(list)
        self.others: dict[float, list[str]] = {}
        self.t0 = time.perf_counter()
        self._last = time.perf_counter()
        self._main = threading.get_ident()
        self._stop = threading.Event()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self._watch = threading.Thread(target=self._watchdog, daemon=True)

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start(TICK_MS)
        self._watch.start()

    def stop(self) -> None:
        self.timer.stop()
        self._stop.set()

    def set_phase(self, name: str) -> None:
        self.phase = name

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((self._phase_at_start, self._last, now - self._last))
        self._last = now
        self._phase_at_start = self.phase

    _phase_at_start = "setup"

    def _watchdog(self) -> None:
        while not self._stop.wait(0.005):
            last = self._last
            if time.perf_counter() - last < STALL_SAMPLE_S:
                continue
            frames = sys._current_frames()
            frame = frames.get(self._main)
            if frame is None:
                continue
            self.samples[last].append(_culprits(traceback.extract_stack(frame)))
            if len(self.samples[last]) == 1:  # what the other threads were doing then
                names = {t.ident: t.name for t in threading.enumerate()}
                self.others[last] = [
                    f"{names.get(tid, tid)}: {_top_frame(f)}" for tid, f in frames.items()
                    if tid not in (self._main, threading.get_ident())]

    def summary(self) -> dict[str, Any]:
        by_phase: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for phase, start, dt in self.gaps:
            by_phase[phase].append((start, dt))
        out = {}
        for phase, rows in by_phase.items():
            if phase == "setup":
                continue
            g = np.array([dt for _, dt in rows])
            start, worst = max(rows, key=lambda r: r[1])
            samples = self.samples.get(start, [])
            ours = collections.Counter(s[0] for s in samples).most_common(1)
            theirs = collections.Counter(s[1] for s in samples).most_common(1)
            out[phase] = {
                "ticks": len(g),
                "p50_ms": round(float(np.median(g)) * 1000, 1),
                "p99_ms": round(float(np.quantile(g, 0.99)) * 1000, 1),
                "max_ms": round(float(g.max()) * 1000, 1),
                "over_100ms": int((g > 0.1).sum()),
                "longest_in": ours[0][0] if ours else "?",
                "longest_napari": theirs[0][0] if theirs else "?",
            }
        return out

    def stalls(self, over_s: float = 0.1) -> list[dict[str, Any]]:
        """Every gap over `over_s` with its phase and its most sampled culprits."""
        out = []
        for phase, start, dt in self.gaps:
            if dt <= over_s or phase in ("setup", "screenshot"):
                continue
            samples = self.samples.get(start, [])
            out.append({
                "phase": phase, "ms": round(dt * 1000, 1), "samples": len(samples),
                "at_s": round(start - self.t0, 2), "other_threads": self.others.get(start, []),
                "in": [f"{k} x{n}" for k, n in
                       collections.Counter(s[0] for s in samples).most_common(2)],
                "napari": [f"{k} x{n}" for k, n in
                           collections.Counter(s[1] for s in samples).most_common(3)],
            })
        return out


def _top_frame(frame: Any) -> str:
    """file:function:line of the innermost frame outside the standard library."""
    for f in reversed(traceback.extract_stack(frame)):
        if "/lib/python3" not in f.filename or "site-packages" in f.filename:
            return f"{Path(f.filename).name}:{f.name}:{f.lineno}"
    return "(idle)"


def _culprits(stack: traceback.StackSummary) -> tuple[str, str]:
    """(deepest napari-wsi-detect frame, deepest napari/vispy/superqt/Qt-side frame)."""
    ours = theirs = "-"
    for f in stack:
        where = f"{Path(f.filename).name}:{f.name}:{f.lineno}"
        if "napari_wsi_detect" in f.filename:
            ours = where
        elif any(p in f.filename for p in ("/napari/", "/vispy/", "/superqt/", "/bermuda")):
            theirs = where
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--moves", type=float, nargs="*", default=[0.3, 0.9, 0.5],
                    help="threshold values the slider is dragged to, in order")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--screenshots", default=None,
                    help="folder for PNGs (during the run, after it, after the first move); "
                         "the screenshot gaps are left out of the figures")
    ap.add_argument("--shot-after-tiles", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--cache", default=None,
                    help="the widget's run cache ($WSI_DETECT_CACHE); default: a new empty "
                         "folder, so the run computes every ROI instead of resuming")
    args = ap.parse_args(argv)
    import os
    import tempfile

    os.environ["WSI_DETECT_CACHE"] = args.cache or tempfile.mkdtemp(prefix="stalls-cache-")

    import napari
    from qtpy.QtCore import QEventLoop, Qt, QTimer
    from qtpy.QtTest import QTest

    from napari_wsi_detect._napari import widget as widget_module

    widget_class = (getattr(widget_module, "DetectMetastasesWidget", None)
                    or widget_module.DetectWidget)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(args.slide, plugin="napari-wsi-detect")
    widget = widget_class(viewer)
    viewer.window.add_dock_widget(widget, name="Detect metastases")
    if args.model != "demo" and hasattr(widget, "set_model_path"):
        widget.set_model_path(args.model)

    def wait(seconds: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec_()

    def wait_until(cond: Any, timeout: float, poll: Any = None) -> bool:
        loop = QEventLoop()
        deadline = time.perf_counter() + timeout
        ok = [False]

        def check() -> None:
            if poll is not None:
                poll()
            if cond():
                ok[0] = True
                loop.quit()
            elif time.perf_counter() > deadline:
                loop.quit()

        t = QTimer()
        t.timeout.connect(check)
        t.start(TICK_MS)
        loop.exec_()
        t.stop()
        return ok[0]

    shots = Path(args.screenshots) if args.screenshots else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)

    def screenshot(name: str) -> None:
        from PIL import Image

        before = rec.phase
        rec.set_phase("screenshot")
        wait(0.3)
        shot = viewer.screenshot(canvas_only=False, flash=False)
        Image.fromarray(shot).convert("RGB").save(shots / f"{name}.png")
        print(f"screenshot {shots / name}.png {shot.shape}")
        rec.set_phase(before)

    wait(1.0)  # let the window settle (first paint)
    rec = GapRecorder()
    rec.start()
    wait(0.5)
    rec.set_phase("idle")
    wait(1.0)
    layers_before = set(map(id, viewer.layers))
    tiles_seen = [0]

    def on_inserted(event: Any) -> None:
        if rec.phase == "run start":
            rec.set_phase("tiles")

    viewer.layers.events.inserted.connect(on_inserted)

    rec.set_phase("run start")
    t0 = rec.t0 = time.perf_counter()  # stall times are given from the click
    QTest.mouseClick(widget.detect_button, Qt.MouseButton.LeftButton)
    shot_done = [shots is None]

    def poll() -> None:
        if not shot_done[0] and rec.phase == "tiles":
            n = tiles_done(widget)
            tiles_seen[0] = n
            if n >= args.shot_after_tiles:
                shot_done[0] = True
                screenshot("run-in-progress")

    started = wait_until(lambda: getattr(widget, "running", False) or rec.phase != "run start",
                         30.0)
    ok = started and wait_until(lambda: not widget_busy(widget), args.timeout, poll)
    run_s = time.perf_counter() - t0
    if not ok:
        print("measure_stalls: the run did not finish in time", file=sys.stderr)
        return 1
    rec.set_phase("after run")
    wait(1.0)
    outcome = getattr(widget, "last_outcome", None)
    callback = dict(getattr(widget, "callback_s", {}) or {})
    n_layers = len([ly for ly in viewer.layers if id(ly) not in layers_before])
    print(f"slide {Path(args.slide).name}: run {run_s:.1f} s, "
          f"ROIs {getattr(outcome, 'done', '?')}, {n_layers} new layers")
    if shots is not None:
        viewer.reset_view()
        screenshot("run-finished")
        rec.set_phase("screenshot")  # the zoom (slide tiles loading) is not our handlers
        zoom_screenshot(viewer, screenshot, wait)
        rec.set_phase("after run")
        wait(1.0)

    ctl = find_threshold_control(widget)
    swap: list[float] = []
    for i, value in enumerate(args.moves, start=1):
        rec.set_phase(f"slider {i} ({value:g})")
        widget_max = getattr(widget, "max_swap_s", None)
        if widget_max is not None:
            widget.max_swap_s = 0.0
        t1 = time.perf_counter()
        set_control_value(ctl, value, wait=wait)
        wait(0.05)
        wait_until(lambda: not widget_busy(widget), 300.0)
        wait(0.5)  # the redraw after the swap
        swap.append(getattr(widget, "max_swap_s", float("nan")))
        print(f"  move {i} to {value:g}: regions in {time.perf_counter() - t1 - 0.5:.2f} s, "
              f"{region_count(widget)} regions")
        if shots is not None and i == 1:
            screenshot("after-slider-move")
    rec.set_phase("end")
    wait(0.2)
    rec.stop()

    table = rec.summary()
    print(f"\n{'phase':<18}{'ticks':>7}{'p50':>8}{'p99':>8}{'max':>8}{'>100ms':>8}  longest stall in")
    for phase, s in table.items():
        if phase in ("end", "screenshot"):
            continue
        print(f"{phase:<18}{s['ticks']:>7}{s['p50_ms']:>8.1f}{s['p99_ms']:>8.1f}"
              f"{s['max_ms']:>8.1f}{s['over_100ms']:>8}  {s['longest_in']}  |  "
              f"{s['longest_napari']}")
    print("\nstalls over 100 ms (stack samples every 5 ms; few samples for a long stall "
          "= another thread held the GIL):")
    for st in rec.stalls():
        print(f"  {st['phase']:<16} {st['ms']:>7.1f} ms at {st['at_s']:>6.1f} s, "
              f"{st['samples']} samples  {', '.join(st['in'])}  |  {', '.join(st['napari'])}")
    if callback:
        print("widget's longest handling per event (ms):",
              {k: round(v * 1000) for k, v in callback.items()})
    if any(np.isfinite(swap)):
        print("widget's regions-layer swap per move (ms):", [round(v * 1000) for v in swap])
    if args.json:
        Path(args.json).write_text(json.dumps({
            "slide": args.slide, "run_s": run_s, "phases": table,
            "stalls": rec.stalls(),
            "callback_ms": {k: v * 1000 for k, v in callback.items()},
            "swap_ms": [v * 1000 for v in swap]}, indent=2) + "\n")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
