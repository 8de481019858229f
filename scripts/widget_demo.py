"""Look at the widget as a user, and measure how responsive the viewer stays.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/widget_demo.py \
        [OUT_DIR] [--screenshot PNG]

A developer tool (not part of the plugin), run from the repository root.

Writes a phantom slide and a random-weight narrow ScanNet into OUT_DIR (default
/tmp/wsi-widget-demo; the bundled demo model is used instead when it exists), opens the
slide, docks the widget, runs Detect on the whole slide and records the gaps between the
ticks of a 10 ms QTimer (the event-loop stalls a user would feel), then moves the
threshold slider and takes a whole-window screenshot.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import napari
    import torch
    from PIL import Image
    from qtpy.QtCore import QCoreApplication, QTimer

    from napari_wsi_detect._napari.widget import DetectMetastasesWidget
    from napari_wsi_detect.models.io import BUNDLED_DIR, save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN
    from napari_wsi_detect.phantom import write_phantom

    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="/tmp/wsi-widget-demo")
    ap.add_argument("--screenshot", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / "phantom.tif"
    if not slide.exists():
        # Test-set seed of `wsi-detect demo` (disjoint from the training phantoms).
        write_phantom(slide, seed=9001, size=(6144, 4608), mpp=0.243)
    if (BUNDLED_DIR / "demo.json").is_file():
        model = "demo"
    else:
        torch.manual_seed(0)
        save_model(ScanNetFCN(width=0.0625), out / "random", {"mpp": 0.243})
        model = str(out / "random.safetensors")

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.open(str(slide), plugin="napari-wsi-detect")
    w = DetectMetastasesWidget(viewer)
    viewer.window.add_dock_widget(w, name="Detect metastases")
    if model != "demo":
        w.set_model_path(model)

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    t0 = time.perf_counter()
    w.detect()
    while w.running or w.postprocessing:
        QCoreApplication.processEvents()
    run_s = time.perf_counter() - t0
    timer.stop()
    g = np.array(gaps[1:])
    print(f"model {Path(model).name}, run {run_s:.1f} s, ROIs {w.last_outcome.done}")
    print(f"event-loop gap: max {g.max() * 1000:.0f} ms, p99 {np.quantile(g, 0.99) * 1000:.0f}"
          f" ms, median {np.median(g) * 1000:.0f} ms ({len(g)} ticks)")
    print("longest handling per event (ms):",
          {k: round(v * 1000) for k, v in w.callback_s.items()})

    prob = w._prob
    w.threshold.setValue(round(float(np.quantile(prob[np.isfinite(prob)], 0.97)), 3))
    t1 = time.perf_counter()
    QCoreApplication.processEvents()
    while w.postprocessing or w._debounce.isActive():
        QCoreApplication.processEvents()
    print(f"slider -> regions {time.perf_counter() - t1:.2f} s (extract_regions "
          f"{w.postprocess_s * 1000:.0f} ms), {len(w._regions)} regions")
    # The picture shows what a user sees after Detect: the model's default threshold.
    w.restore_defaults()
    QCoreApplication.processEvents()
    while w.postprocessing or w._debounce.isActive():
        QCoreApplication.processEvents()
    if args.screenshot:
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for n in viewer.window._qt_window.findChildren(NapariQtNotification):
            n.close()
        viewer.reset_view()
        for _ in range(30):
            QCoreApplication.processEvents()
            time.sleep(0.02)
        shot = viewer.screenshot(canvas_only=False, flash=False)
        Image.fromarray(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
            args.screenshot, optimize=True)
        print("screenshot", args.screenshot, shot.shape)
    viewer.close()


if __name__ == "__main__":
    main()
