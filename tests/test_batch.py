"""`wsi-detect batch` / `run_batch`: a cohort of small phantoms on dask.distributed.

One phantom cohort (3 slides + a broken one) and one external cluster (a scheduler and
two workers started with dask's own `dask scheduler` / `dask worker ADDRESS`) are
shared by the module, so worker start-up and imports are paid once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_wsi_detect.batch.report import REPORT_CSV, REPORT_JSON

BIN = Path(sys.executable).parent
SIZE = (2048, 1536)
SLOW_ROI = 24  # map cells per ROI side: ~16 tissue ROIs per slide, so a run can be caught midway


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """p1, p2 (phantoms with truth beside them) and broken.tif (not a slide)."""
    from napari_wsi_detect.phantom import write_phantom

    folder = tmp_path_factory.mktemp("cohort")
    for seed in (1, 2):
        write_phantom(folder / f"p{seed}.tif", seed=seed, size=SIZE, mpp=0.243)
    (folder / "broken.tif").write_bytes(b"II*\x00" + os.urandom(4000))
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, client) of a scheduler + 2 workers, each its own process."""
    dask_cli = BIN / "dask"
    if not dask_cli.exists():
        pytest.skip(f"{dask_cli} not found (the dask command line comes with distributed)")
    from distributed import Client

    tmp = tmp_path_factory.mktemp("cluster")
    sched_file = tmp / "scheduler.json"
    procs = [subprocess.Popen(
        [str(dask_cli), "scheduler", "--scheduler-file", str(sched_file), "--host",
         "127.0.0.1", "--port", "0", "--no-dashboard"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=open(tmp / "scheduler.log", "w"))]
    client = None
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, (tmp / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(dask_cli), "worker", address, "--nthreads", "1", "--memory-limit",
                 "3GiB", "--no-dashboard"],
                env=_env(), stdout=subprocess.DEVNULL, stderr=open(tmp / f"w{i}.log", "w")))
        client = Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=120)
        yield address, client
    finally:
        if client is not None:
            client.close()
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _rows(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out / REPORT_JSON).read_text())["rows"]}


def _computed_blocks(partial: Path) -> int:
    from napari_wsi_detect.engine.heatmap import HeatmapStore

    try:
        return int(HeatmapStore.open(partial).computed_blocks().sum())
    except Exception:  # being created by the worker right now
        return 0


# -- cohort discovery (no cluster) -------------------------------------------------------------

def test_folder_gives_its_slides_not_masks_and_duplicate_names_differ(cohort, tmp_path):
    from napari_wsi_detect.batch.cohort import CohortError, find_slides, slide_names

    slides = find_slides([cohort])
    assert [s.name for s in slides] == ["broken.tif", "p1.tif", "p2.tif"]
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "p1.tif"
    shutil.copy(cohort / "p1.tif", twin)
    names = slide_names(find_slides([cohort / "p1.tif", twin, cohort / "p2.tif"]))
    assert names[2] == "p2" and names[0] != names[1] and all(n.startswith("p1-") for n in names[:2])
    assert names == slide_names(find_slides([cohort / "p1.tif", twin, cohort / "p2.tif"]))
    with pytest.raises(CohortError, match="not found"):
        find_slides([tmp_path / "nope.svs"])


def test_second_batch_on_a_locked_folder_is_refused_before_any_work(cohort, tmp_path):
    from napari_wsi_detect.batch import run_batch
    from napari_wsi_detect.detectors.outdir import OutputFolderError, RunFolderLock

    with RunFolderLock(tmp_path), pytest.raises(OutputFolderError, match="another run"):
        run_batch([cohort / "p1.tif"], "metastases", tmp_path)
    assert not (tmp_path / "p1").exists()


# -- local cluster: the whole cohort, then a rerun ---------------------------------------------

@pytest.mark.slow
def test_local_cluster_cohort_one_failed_row_rest_done_then_rerun_does_no_work(cohort, tmp_path):
    from napari_wsi_detect.batch import run_batch

    out = tmp_path / "cohort"
    events = []
    # One worker: its slides must run one after the other (see the spans below), and it
    # loads the model once for all of them.
    report = run_batch([cohort], "metastases", out, workers=1, truth=[cohort],
                       on_event=lambda kind, data: events.append(kind))
    rows = _rows(out)
    assert {n: r["status"] for n, r in rows.items()} == {
        "broken": "failed", "p1": "done", "p2": "done"}
    assert "broken.tif" in rows["broken"]["error"] and rows["broken"]["failure"] == "input"
    assert report.exit_code == 1
    data = json.loads((out / REPORT_JSON).read_text())
    assert data["cluster"]["local"] and data["cluster"]["workers"] == 1
    assert data["cluster"]["memory_limit_bytes"] > 0 and data["cluster"]["torch_threads"] >= 1
    for name in ("p1", "p2"):
        r = rows[name]
        summary = json.loads((out / name / "summary.json").read_text())
        assert r["score"] == pytest.approx(summary["slide_score"])
        assert r["count"] == summary["region_count"] and r["rois_computed"] > 0
        assert r["model_sha256"] == summary["model"]["weights_sha256"]
        assert r["tumour_area_mm2"] == pytest.approx(
            sum(g["area_um2"] for g in summary["regions"]) / 1e6, rel=1e-4)
        assert (out / name / "heatmap.zarr").is_dir()
    # The worker loaded the model once: its later slides report no load (the broken
    # slide fails after the model is loaded, in the job).
    by_worker: dict[str, list] = {}
    for r in rows.values():
        by_worker.setdefault(r["worker"], []).append(r["model_load_s"])
    assert any(len(v) > 1 for v in by_worker.values())
    assert all(sorted(v)[:-1] == [0.0] * (len(v) - 1) for v in by_worker.values())
    # One slide at a time per worker: the job's own dask work (the NGFF export) must not
    # secede the task and let the worker start its next slide alongside.
    for worker in by_worker:
        spans = sorted((r["started_unix"], r["started_unix"] + r["seconds"])
                       for r in rows.values() if r["worker"] == worker)
        assert all(b[0] >= a[1] - 0.05 for a, b in zip(spans, spans[1:], strict=False)), spans
    csv_lines = (out / REPORT_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("slide,name,status,score,count,tumour_area_mm2")
    assert len(csv_lines) == 4
    # The phantoms' truth: FROC through the evaluation code; AUC undefined (no normals).
    ev = data["evaluation"]
    assert 0.0 < ev["froc_score"] <= 1.0 and ev["slides"] == 2
    assert (out / "evaluation.json").is_file() and "slide" in events and "cluster" in events

    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in ("p1", "p2")}
    again = run_batch([cohort], "metastases", out, workers=1)
    rows2 = _rows(out)
    assert {n: r["status"] for n, r in rows2.items()} == {
        "broken": "failed", "p1": "skipped", "p2": "skipped"}
    assert rows2["broken"]["previous"] is True
    assert not again.model_work and again.submitted == 0 and "cluster" not in again.info
    assert "no model work" in json.loads((out / REPORT_JSON).read_text())["note"]
    assert again.exit_code == 1
    assert stamps == {n: (out / n / "summary.json").stat().st_mtime_ns for n in stamps}
    assert rows2["p1"]["score"] == rows["p1"]["score"]


# -- an existing scheduler reached by address ------------------------------------------------

@pytest.mark.slow
def test_cli_runs_on_a_scheduler_started_with_dask_commands(cohort, cluster, tmp_path):
    address, client = cluster
    out = tmp_path / "remote"
    proc = subprocess.run(
        [str(BIN / "wsi-detect"), "batch", str(cohort / "p1.tif"), str(cohort / "broken.tif"),
         "--task", "metastases", "--scheduler", address, "--out", str(out), "--quiet"],
        env=_env(), capture_output=True, text=True, timeout=300)
    # Exit code 1: a slide failed; the other one finished.
    assert proc.returncode == 1, proc.stderr
    assert "1 done, 1 failed" in proc.stdout
    assert "failed: " in proc.stderr and "broken.tif" in proc.stderr
    rows = _rows(out)
    assert [r["status"] for r in rows.values()] == ["done", "failed"]
    assert rows["p1"]["worker"] in set(client.scheduler_info()["workers"])
    assert (out / "p1" / "regions.geojson").is_file()


@pytest.mark.slow
def test_killed_worker_mid_slide_is_retried_elsewhere_and_resumes(cohort, cluster, tmp_path):
    from napari_wsi_detect.batch import run_batch

    address, client = cluster
    out = tmp_path / "killed"
    killed: dict = {}

    def kill_when_midway() -> None:
        partial = out / "p2" / "heatmap.zarr.partial"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if partial.exists() and _computed_blocks(partial) >= 1:
                for worker, keys in client.processing().items():
                    if any("p2" in str(k) for k in keys):
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed.update(worker=worker, blocks=_computed_blocks(partial))
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_midway, daemon=True)
    killer.start()
    report = run_batch([cohort / "p2.tif", cohort / "p1.tif"], "metastases", out,
                       scheduler=address, roi_cells=SLOW_ROI)
    killer.join(timeout=5)
    assert killed, "the slide finished before a worker could be killed midway"
    rows = _rows(out)
    assert rows["p2"]["status"] == "done" and rows["p1"]["status"] == "done"
    assert rows["p2"]["worker"] != killed["worker"]
    assert rows["p2"]["rois_resumed"] >= 1  # the dead worker's tiles were kept
    assert report.exit_code == 0
    summary = json.loads((out / "p2" / "summary.json").read_text())
    assert summary["complete"] and summary["rois"]["pending"] == 0
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed one


@pytest.mark.slow
def test_ctrl_c_keeps_the_report_and_a_rerun_resumes(cohort, cluster, tmp_path):
    from napari_wsi_detect.batch import run_batch

    address, _ = cluster
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [str(BIN / "wsi-detect"), "batch", str(cohort / "p1.tif"), str(cohort / "p2.tif"),
         "--task", "metastases", "--scheduler", address, "--out", str(out), "--quiet",
         "--roi-cells", str(SLOW_ROI)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partials = [out / n / "heatmap.zarr.partial" for n in ("p1", "p2")]
    deadline = time.monotonic() + 240
    while not any(p.exists() and _computed_blocks(p) >= 1 for p in partials):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume" in stderr
    rows = _rows(out)
    assert {r["status"] for r in rows.values()} <= {"cancelled", "done"}
    assert "cancelled" in {r["status"] for r in rows.values()}
    assert any(p.is_dir() for p in partials)  # resumable partial heatmap kept

    report = run_batch([cohort / "p1.tif", cohort / "p2.tif"], "metastases", out,
                       scheduler=address, roi_cells=SLOW_ROI)
    assert report.exit_code == 0
    rows2 = _rows(out)
    assert all(r["status"] in ("done", "skipped") for r in rows2.values())
    resumed = [r for n, r in rows2.items() if rows[n]["status"] == "cancelled"]
    assert resumed and any((r["rois_resumed"] or 0) >= 1 for r in resumed)


def test_a_slide_whose_worker_keeps_dying_is_a_failed_row():
    from distributed import KilledWorker

    from napari_wsi_detect.batch.run import _outcome

    class Dead:
        def result(self):
            raise KilledWorker("wsi-detect-x", None, 3)

    row = _outcome(Dead())
    assert row["status"] == "failed" and row["failure"] == "worker"
    assert "memory" in row["error"]


@pytest.mark.slow
def test_batch_runs_every_registered_detector_and_its_evaluation(cluster, tmp_path):
    """Batch names no task: each other detector in the registry runs through it, with
    the evaluation of its result kind (F1, Dice) on the phantom's truth (metastases and
    its FROC + AUC: the cohort tests above; this small phantom has only ITC lesions)."""
    from napari_wsi_detect.batch import run_batch
    from napari_wsi_detect.detectors import available
    from napari_wsi_detect.phantom import write_phantom
    from test_detector_contract import TEST_MODELS

    address, _ = cluster
    (tmp_path / "slide").mkdir()
    slide = tmp_path / "slide" / "small.tif"
    write_phantom(slide, seed=4, size=(1024, 768), mpp=0.243)
    metric = {"regions": "froc_score", "points": "f1", "mask": "dice"}
    for det in available():
        if det.task == "metastases":
            continue
        model = TEST_MODELS[det.task](tmp_path / f"{det.task}-model")
        out = tmp_path / det.task
        report = run_batch([slide], det.task, out, scheduler=address, model=str(model),
                           truth=[slide.parent])
        row = report.rows["small"]
        assert row["status"] == "done", row.get("error")
        assert (out / "small" / det.results_file).is_file()
        assert row["model_sha256"] and row["count"] is not None
        ev = report.evaluation
        assert "error" not in ev and not ev.get("skipped"), ev
        assert isinstance(ev[metric[det.result_kind]], float), ev


def test_cuda_on_a_cluster_without_gpu_workers_is_refused(cohort, cluster, tmp_path):
    """--device cuda asks every slide for a "GPU" resource: without a worker declaring
    one the tasks would wait for ever, so the batch refuses to start."""
    from napari_wsi_detect.batch import run_batch
    from napari_wsi_detect.batch.cluster import ClusterError

    address, _ = cluster
    with pytest.raises(ClusterError, match="GPU=1"):
        run_batch([cohort / "p1.tif"], "metastases", tmp_path / "gpu", scheduler=address,
                  device="cuda")
    assert not (tmp_path / "gpu" / "p1").exists()


def test_demo_means_the_tasks_bundled_model() -> None:
    """`--model demo` (the default) is each task's own bundled model, checked before any
    slide runs (it once meant the metastasis model for every task)."""
    from napari_wsi_detect.batch.run import _check_model
    from napari_wsi_detect.detectors import get_detector

    for task in ("metastases", "mitoses", "tumour"):
        _, config = _check_model(get_detector(task), "demo")
        assert config.get("task", "metastases") == task
