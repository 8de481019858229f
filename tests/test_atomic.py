"""The one atomic-write helper: complete or absent, umask modes, JSON-safe values."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from napari_wsi_detect import _atomic
from napari_wsi_detect._atomic import (
    atomic_path,
    atomic_paths,
    file_mode,
    json_safe,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(_atomic.TMP_SUFFIX))


@pytest.fixture
def umask():
    """Set the umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def test_success_writes_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "sub" / "a.txt"  # the folder is created
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".a.txt.")
        assert not final.exists()  # nothing under the final name while writing
        tmp.write_text("hello")
    assert final.read_text() == "hello"
    assert _leftovers(final.parent) == []


def test_raise_midway_keeps_the_previous_file(tmp_path):
    final = tmp_path / "summary.json"
    final.write_text("old, complete")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(final) as tmp:
        with open(tmp, "w") as fh:
            fh.write("new, half")
            raise RuntimeError("disk on fire")
    assert final.read_text() == "old, complete"
    assert _leftovers(tmp_path) == []


def test_raise_midway_leaves_no_file_when_there_was_none(tmp_path):
    final = tmp_path / "regions.geojson"
    with pytest.raises(ValueError), atomic_path(final) as tmp:
        tmp.write_bytes(b"{\"type\": \"FeatureColl")
        raise ValueError("cut off")
    assert list(tmp_path.iterdir()) == []


def test_json_that_cannot_be_serialised_leaves_nothing(tmp_path):
    final = tmp_path / "x.json"
    final.write_text("{}\n")
    with pytest.raises(TypeError):
        write_json_atomic(final, {"a": object()})
    assert final.read_text() == "{}\n" and _leftovers(tmp_path) == []


def test_failed_rename_removes_the_temporary(tmp_path, monkeypatch):
    final = tmp_path / "a.bin"

    def refuse(src, dst):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_bytes_atomic(final, b"data")
    assert list(tmp_path.iterdir()) == []


def test_group_is_renamed_in_the_order_given(tmp_path, monkeypatch):
    mask, truth, slide = (tmp_path / n for n in ("m.tif", "t.geojson", "s.tif"))
    order = []
    real = os.replace

    def record(src, dst):
        order.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", record)
    with atomic_paths(mask, truth, slide) as tmps:
        for t, text in zip(tmps, "mts", strict=True):
            t.write_text(text)
    assert order == ["m.tif", "t.geojson", "s.tif"]
    assert [p.read_text() for p in (mask, truth, slide)] == ["m", "t", "s"]


def test_group_failure_changes_none_of_the_files(tmp_path):
    a, b = tmp_path / "w.safetensors", tmp_path / "w.json"
    a.write_text("old weights")
    with pytest.raises(OSError), atomic_paths(a, b) as (ta, tb):
        ta.write_text("new weights")
        raise OSError("no space left")
    assert a.read_text() == "old weights" and not b.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert file_mode() == mode
    for i, write in enumerate((lambda p: write_text_atomic(p, "x"),
                               lambda p: write_json_atomic(p, {"a": 1}))):
        p = write(tmp_path / f"f{i}")
        assert stat.S_IMODE(p.stat().st_mode) == mode
    # the same mode an ordinary open() gives
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_umask_without_proc(tmp_path, umask, monkeypatch):
    umask(0o027)

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(_atomic, "open", no_proc, raising=False)
    assert file_mode() == 0o640
    assert os.umask(0o027) == 0o027  # the round trip restored it


def test_json_nan_and_inf_become_null(tmp_path):
    p = write_json_atomic(tmp_path / "s.json", {
        "nan": float("nan"), "inf": float("inf"), "-inf": -np.inf,
        "np_nan": np.float32("nan"), "list": [1.5, float("nan"), (2, np.inf)],
    })
    text = p.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "inf": None, "-inf": None, "np_nan": None,
                                "list": [1.5, None, [2, None]]}


def test_json_numpy_values_become_python():
    out = json_safe({
        "f": np.float64(0.25), "f32": np.float32(0.5), "i": np.int64(7), "u": np.uint8(255),
        "b": np.bool_(True), "a": np.array([[1, 2], [3, 4]], np.int32),
        "fa": np.array([0.5, np.nan]), np.int64(3): "numpy key", "s": "text", "none": None,
    })
    assert out == {"f": 0.25, "f32": 0.5, "i": 7, "u": 255, "b": True, "a": [[1, 2], [3, 4]],
                   "fa": [0.5, None], 3: "numpy key", "s": "text", "none": None}
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["f32"]) is float
    assert all(type(k) in (str, int) for k in out)
    json.dumps(out, allow_nan=False)  # serialisable as is


def test_json_layout(tmp_path):
    p = write_json_atomic(tmp_path / "a.json", {"a": [1, 2]})
    assert p.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    p = write_json_atomic(tmp_path / "b.json", {"a": [1, 2]}, indent=None)
    assert p.read_text() == '{"a": [1, 2]}\n'
