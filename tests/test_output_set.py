"""A run folder's outputs (issue 13): damaged heatmaps are repaired by recomputing only
the damaged ROIs, the output set changes together whatever step a kill lands on, every
reader refuses a mixed set, and outputs get the user's umask.

The slide is a small phantom (2048 x 1536 px, 6 ROIs) and the model the bundled demo,
so one run takes about two seconds on one CPU thread.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_wsi_detect.detectors.job import DetectionRequest, detect
from napari_wsi_detect.detectors.result import read_summary
from napari_wsi_detect.engine.heatmap import COMMIT_JOURNAL, HeatmapStoreError, open_heatmap
from napari_wsi_detect.errors import WsiDetectError

NEW_THRESHOLD = 0.3  # a rerun with another threshold writes a different regions file


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    from napari_wsi_detect.phantom import write_phantom

    path = tmp_path_factory.mktemp("slide") / "p.tif"
    write_phantom(path, seed=3, size=(2048, 1536), mpp=0.243)
    return path


@pytest.fixture(scope="module")
def good_run(slide, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    # 52 cells (1060 px ROIs) make the 6 ROIs; later runs into the folder keep the
    # store's ROI size (engine.heatmap.stored_roi_cells), so the CLI calls need no flag.
    detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(out),
                            roi_cells=52))
    return out


def _copy(good_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    return out


def _strays(out: Path) -> list[str]:
    """Anything but the finished set (and the lock file of a killed run)."""
    allowed = {"heatmap.zarr", "regions.geojson", "summary.json", ".wsi-detect.lock",
               "maps.ome.zarr"}
    return sorted(p.name for p in out.iterdir() if p.name not in allowed)


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from napari_wsi_detect.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _corrupt(chunk: Path, how: str) -> None:
    data = bytearray(chunk.read_bytes())
    if how == "garbage":
        data[len(data) // 2: len(data) // 2 + 32] = b"x" * 32
        chunk.write_bytes(bytes(data))
    elif how == "truncated":
        chunk.write_bytes(bytes(data[:10]))
    elif how == "deleted":
        chunk.unlink()


# ----------------------------------------------------------------------------------------
# damaged heatmaps


@pytest.mark.parametrize("how", ["garbage", "truncated", "deleted"])
def test_damaged_chunk_recomputes_only_that_roi(good_run, slide, tmp_path, capsys, how):
    out = _copy(good_run, tmp_path)
    before = open_heatmap(out).to_numpy()
    _corrupt(out / "heatmap.zarr" / "prob" / "c" / "0" / "1", how)
    if how != "deleted":  # a missing chunk reads as "not computed" (NaN), not an error
        with pytest.raises(HeatmapStoreError, match="run the detection again"):
            open_heatmap(out).to_numpy()
    rc, stdout, err = _cli(["metastases", str(slide), "--out", str(out), "--quiet",
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "1 computed (1 damaged in the store, recomputed), 5 resumed" in stdout
    assert "Traceback" not in err
    np.testing.assert_allclose(open_heatmap(out).to_numpy(), before, rtol=1e-6)
    assert read_summary(out, check=True)["timings"]["rois_repaired"] == 1
    assert _strays(out) == []


def test_damaged_computed_flags_are_rebuilt_from_the_tiles(good_run, slide, tmp_path,
                                                           capsys):
    out = _copy(good_run, tmp_path)
    before = open_heatmap(out).to_numpy()
    _corrupt(out / "heatmap.zarr" / "computed" / "c" / "0" / "0", "garbage")
    rc, stdout, err = _cli(["metastases", str(slide), "--out", str(out), "--quiet",
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "0 computed" in stdout  # every tile was readable: nothing recomputed
    np.testing.assert_allclose(open_heatmap(out).to_numpy(), before, rtol=1e-6)


def test_damaged_store_description_says_overwrite_and_keeps_the_result(good_run, slide,
                                                                      tmp_path, capsys):
    out = _copy(good_run, tmp_path)
    (out / "heatmap.zarr" / "zarr.json").write_text("{not json")
    regions = (out / "regions.geojson").read_bytes()
    rc, _, err = _cli(["metastases", str(slide), "--out", str(out), "--quiet",
                       "--device", "cpu"], capsys)
    assert rc == 2 and "--overwrite" in err and "heatmap.zarr" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (out / "regions.geojson").read_bytes() == regions
    rc, _, err = _cli(["metastases", str(slide), "--out", str(out), "--quiet",
                       "--device", "cpu", "--overwrite"], capsys)
    assert rc == 0, err
    assert read_summary(out, check=True)["complete"]


# ----------------------------------------------------------------------------------------
# the output set under kills


class _Kill(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the package catches it."""


def _rerun(slide: Path, out: Path) -> None:
    detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(out),
                            params={"threshold": NEW_THRESHOLD}))


def _assert_one_set(out: Path, old: dict) -> str:
    """The folder holds one whole set (after a reader installs a committed one): the
    old or the new; returns which."""
    assert (out / "heatmap.zarr").is_dir(), "finished heatmap lost (left only as .partial?)"
    summary = read_summary(out, check=True)  # regions + store belong to this summary
    open_heatmap(out).to_numpy()
    if summary["parameters"]["threshold"] == old["parameters"]["threshold"]:
        assert (out / "summary.json").read_text() == json.dumps(old, indent=2) + "\n"
        return "old"
    assert summary["parameters"]["threshold"] == NEW_THRESHOLD
    return "new"


# A rerun into a finished folder renames 9 times (copy of the store to .partial, two
# zarr attribute writes, results, summary, journal, old store aside, results, summary;
# the store swap itself is one renameat2 exchange); 10 and 11 = no kill.
@pytest.mark.parametrize("step", range(1, 12))
def test_kill_at_every_rename_of_a_rerun_leaves_one_whole_set(good_run, slide, tmp_path,
                                                              monkeypatch, step):
    out = _copy(good_run, tmp_path)
    old = json.loads((out / "summary.json").read_text())
    calls = {"n": 0}
    real_replace, real_rename = os.replace, os.rename

    def counting(real):
        def op(src, dst, *a, **k):
            if "maps.ome.zarr" in str(dst):  # the NGFF copy, written after the set
                return real(src, dst, *a, **k)  # (its kills: tests/test_exports.py)
            calls["n"] += 1
            if calls["n"] == step:
                raise _Kill
            return real(src, dst, *a, **k)
        return op

    monkeypatch.setattr(os, "replace", counting(real_replace))
    monkeypatch.setattr(os, "rename", counting(real_rename))
    try:
        _rerun(slide, out)
        killed = False
    except _Kill:
        killed = True
    monkeypatch.undo()
    assert killed or calls["n"] < step
    assert (out / "heatmap.zarr").is_dir(), "the finished heatmap went missing"
    committed = (out / COMMIT_JOURNAL).exists()
    which = _assert_one_set(out, old)
    assert which == ("new" if committed or not killed else "old")
    _rerun(slide, out)  # and the next run finishes cleanly, whatever was left
    assert _assert_one_set(out, old) == "new" and _strays(out) == []


def test_sigkill_at_random_moments_never_loses_the_set(good_run, slide, tmp_path):
    rng = np.random.default_rng(13)
    code = ("import sys; from napari_wsi_detect.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outcomes = []
    for i in range(4):
        out = _copy(good_run, tmp_path / str(i))
        old = json.loads((out / "summary.json").read_text())
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "metastases", str(slide), "--out", str(out),
             "--quiet", "--device", "cpu", "--threshold", str(NEW_THRESHOLD)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        time.sleep(float(rng.uniform(1.0, 4.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        outcomes.append((proc.returncode, _assert_one_set(out, old)))
    assert len(outcomes) == 4


def test_readers_refuse_a_mixed_set(good_run, slide, tmp_path, capsys):
    out = _copy(good_run, tmp_path)
    other = _copy(good_run, tmp_path / "other")
    _rerun(slide, other)
    # new regions beside the old summary (what a kill did before the set was atomic)
    shutil.copy(other / "regions.geojson", out / "regions.geojson")
    with pytest.raises(WsiDetectError, match="regions.geojson does not belong"):
        read_summary(out, check=True)
    rc, _, err = _cli(["evaluate", "froc", "--detections", str(out), "--truth",
                       str(slide.with_suffix(".geojson"))], capsys)
    assert rc == 2 and "run the detection again" in err and "Traceback" not in err
    # another run's heatmap beside this summary
    shutil.copy(good_run / "regions.geojson", out / "regions.geojson")
    shutil.rmtree(out / "heatmap.zarr")
    shutil.copytree(other / "heatmap.zarr", out / "heatmap.zarr")
    with pytest.raises(WsiDetectError, match="heatmap.zarr is not the heatmap"):
        read_summary(out, check=True)


def test_interrupted_commit_is_installed_by_a_reader_or_refused_read_only(
        good_run, slide, tmp_path, monkeypatch):
    out = _copy(good_run, tmp_path)
    from napari_wsi_detect.detectors import outdir

    def killed_install(folder):  # the commit point passed, then the process died
        raise _Kill

    monkeypatch.setattr(outdir, "_finish", killed_install)
    with pytest.raises(_Kill):
        _rerun(slide, out)
    monkeypatch.undo()
    assert (out / COMMIT_JOURNAL).exists()
    with pytest.raises(HeatmapStoreError, match="interrupted"):
        open_heatmap(out)  # the engine's reader does not guess which store is current
    if os.geteuid() != 0:  # root writes into read-only folders
        out.chmod(0o555)
        try:
            with pytest.raises(WsiDetectError, match="not writable"):
                read_summary(out, check=True)
        finally:
            out.chmod(0o755)
    assert read_summary(out, check=True)["parameters"]["threshold"] == NEW_THRESHOLD
    assert _strays(out) == []


def test_overwrite_keeps_the_previous_result_until_the_new_one_is_complete(
        good_run, slide, tmp_path):
    out = _copy(good_run, tmp_path)
    regions = (out / "regions.geojson").read_bytes()
    import threading

    cancel = threading.Event()
    with pytest.raises(WsiDetectError, match="cancelled"):
        detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(out),
                                overwrite=True), cancel,
               progress=lambda d, t, e: cancel.set() if d >= 1 else None)
    assert (out / "regions.geojson").read_bytes() == regions
    read_summary(out, check=True)
    assert (out / "heatmap.zarr.partial").is_dir()


# ----------------------------------------------------------------------------------------
# file modes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


def test_every_output_follows_the_umask(slide, tmp_path, capsys, umask_027):
    """Run, phantom, GeoJSON export and evaluation reports: 0640 under umask 027 (the
    umask decides, not a fixed 0600 or 0644)."""
    from napari_wsi_detect.annotations.geojson import write_geojson

    (tmp_path / "ph").mkdir()
    (tmp_path / "rep").mkdir()
    rc, _, err = _cli(["phantom", str(tmp_path / "ph" / "ph.tif"), "--size", "1024", "768",
                       "--quiet"], capsys)
    assert rc == 0, err
    out = tmp_path / "run"
    rc, _, err = _cli(["metastases", str(slide), "--out", str(out), "--quiet", "--device",
                       "cpu"], capsys)
    assert rc == 0, err
    rc, _, err = _cli(["evaluate", "froc", "--detections", str(out), "--truth",
                       str(slide.with_suffix(".geojson")), "--json",
                       str(tmp_path / "rep" / "froc.json"), "--plot",
                       str(tmp_path / "rep" / "froc.png")], capsys)
    assert rc == 0, err
    write_geojson(tmp_path / "rep" / "export.geojson", read_regions(out))
    modes = {**_modes(tmp_path / "ph"), **_modes(out), **_modes(tmp_path / "rep")}
    assert len(modes) >= 12 and any(k.startswith("heatmap.zarr/prob/c/") for k in modes)
    assert {k: oct(v) for k, v in modes.items() if v != umask_027} == {}


def read_regions(out: Path):
    from napari_wsi_detect.annotations.geojson import read_geojson

    return read_geojson(out / "regions.geojson")
