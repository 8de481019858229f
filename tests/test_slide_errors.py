"""Every unreadable file gives SlideOpenError saying what is wrong and what is
supported; corrupt tiles give SlideReadError."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from conftest import shared_file
from napari_wsi_detect.errors import SlideOpenError, SlideReadError, WsiDetectError
from napari_wsi_detect.slide import open_slide


def assert_open_error(path, *fragments: str) -> str:
    with pytest.raises(SlideOpenError) as info:
        open_slide(path)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    assert "Supported:" in msg and ".svs" in msg and "OME-TIFF" in msg
    assert isinstance(info.value, WsiDetectError)
    return msg


def _tiled_tiff(path, seed=0, size=(1024, 1024)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(small, 16, axis=0), 16, axis=1)
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="jpeg")
    return img


def test_text_file_named_svs():
    msg = assert_open_error(shared_file("slides/broken.svs"), "not a slide", "text file named .svs")
    assert str(shared_file("slides/broken.svs")) in msg


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.svs"
    empty.touch()
    assert_open_error(empty, "file is empty")


def test_png_renamed_svs(tmp_path):
    fake = tmp_path / "scan.svs"
    shutil.copy(shared_file("tiles/no-tissue.png"), fake)
    assert_open_error(fake, "not a slide: looks like a PNG image named .svs")


def test_truncated_tiff(tmp_path):
    path = tmp_path / "whole.tif"
    _tiled_tiff(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    assert_open_error(cut, "truncated TIFF")


def test_truncated_svs(tmp_path):
    data = shared_file("slides/cmu-1-small-region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert_open_error(cut, "truncated")


def test_missing_path(tmp_path):
    assert_open_error(tmp_path / "nowhere.svs", "file not found")


def test_directory(tmp_path):
    assert_open_error(tmp_path, "directory, not a slide file")


def test_unknown_binary(tmp_path):
    junk = tmp_path / "junk.ndpi"
    junk.write_bytes(bytes(range(256)) * 4)
    assert_open_error(junk, "not a slide")


def test_corrupt_tile_raises_read_error(tmp_path):
    path = tmp_path / "corrupt.tif"
    _tiled_tiff(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x00" * count  # same size, garbage content
    path.write_bytes(bytes(raw))
    with open_slide(path) as s:
        s.read_region(0, 0, 0, 256, 256)  # an intact tile still reads
        with pytest.raises(SlideReadError, match="tile 5 of level 0 is corrupt"):
            s.read_region(0, 256, 256, 256, 256)  # tile 5 = row 1, column 1
