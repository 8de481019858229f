"""Hostile inputs (issue 13): odd and damaged slides, model configs, annotations and
evaluation inputs, each built in tmp_path by the test (nothing large is committed).

Every case ends in the package's own exception with a message that names the file and
says what is wrong, or (for the CLI) one line on stderr and exit 2, never a traceback.
Bounds are tested by counting the work done, not by timing.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_wsi_detect.errors import (
    EmptyTissueError,
    SlideOpenError,
    SlideReadError,
    WsiDetectError,
)
from napari_wsi_detect.slide import open_slide

# ----------------------------------------------------------------------------------------
# hand-made TIFFs


def declared_tiff(path: Path, width: int, height: int, tile: int = 1024,
                  pad_bytes: int = 0, sparse: bool = False) -> Path:
    """A classic TIFF whose one IFD declares `width` x `height` RGB px in `tile`² deflate
    tiles, every tile offset pointing at the same small white tile (or, `sparse`, none),
    optionally padded with `pad_bytes` zeros so the file is not implausibly small."""
    n = (-(-width // tile)) * (-(-height // tile))
    data = zlib.compress(np.full((tile, tile, 3), 255, np.uint8).tobytes())
    tile_off = 8
    bps_off = tile_off + len(data)
    offs_off = bps_off + 6
    cnt_off = offs_off + 4 * n
    pad_off = cnt_off + 4 * n
    ifd_off = pad_off + pad_bytes
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bps_off), (259, 3, 1, 8),
            (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile),
            (323, 3, 1, tile), (324, 4, n, offs_off), (325, 4, n, cnt_off)]
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", ifd_off))
        f.write(data)
        f.write(struct.pack("<3H", 8, 8, 8))
        f.write(np.full(n, 0 if sparse else tile_off, "<u4").tobytes())
        f.write(np.full(n, 0 if sparse else len(data), "<u4").tobytes())
        f.write(b"\0" * pad_bytes)
        f.write(struct.pack("<H", len(tags)))
        for tag, typ, count, value in tags:
            if typ == 3 and count == 1:
                f.write(struct.pack("<HHIHH", tag, typ, count, value, 0))
            else:
                f.write(struct.pack("<HHII", tag, typ, count, value))
        f.write(struct.pack("<I", 0))
    return path


def _patch_tag(path: Path, name: str, value: int) -> None:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[name]
        offset, fmt = tag.valueoffset, {3: "<H", 4: "<I"}[int(tag.dtype)]
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def fake_svs(path: Path, corrupt_first_tile: bool = True) -> Path:
    """A small Aperio-style SVS (OpenSlide's 'aperio' format) with a thumbnail and a
    label; optionally its first level-0 tile overwritten with zeros."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    head = "Aperio Image Library v12.0.15\r\n"
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, tile=(256, 256), photometric="rgb", compression="jpeg",
                 description=head + "1024x1024 [0,0 1024x1024] (256x256) JPEG/RGB Q=70"
                 "|AppMag = 20|MPP = 0.5", metadata=None)
        tw.write(np.ascontiguousarray(rgb[::8, ::8]), photometric="rgb",
                 description=head + "1024x1024 -> 128x128", metadata=None)
        tw.write(np.full((64, 96, 3), 200, np.uint8), photometric="rgb",
                 description=head + "label 96x64", subfiletype=1, metadata=None)
    if corrupt_first_tile:
        with tifffile.TiffFile(path) as tif:
            o, c = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
        data = bytearray(path.read_bytes())
        data[o + 10:o + c] = b"\0" * (c - 10)
        path.write_bytes(bytes(data))
    return path


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from napari_wsi_detect.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------------------
# slides


def test_huge_declared_tiff_is_refused_at_open(tmp_path):
    """10⁶ × 10⁶ px declared in a file of a few hundred kB: refused before any read."""
    path = declared_tiff(tmp_path / "huge.tif", 10**6, 10**6, tile=4096)
    with pytest.raises(SlideOpenError, match=r"declares a 1000000 x 1000000 px") as info:
        open_slide(path)
    assert str(path) in str(info.value) and "header is damaged" in str(info.value)


def test_huge_declared_tiff_info_exits_2_fast(tmp_path, capsys):
    path = declared_tiff(tmp_path / "huge.tif", 10**6, 10**6, tile=4096)
    rc, out, err = _cli(["info", str(path)], capsys)
    assert rc == 2 and "declares a 1000000 x 1000000 px" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_too_few_tile_offsets_is_refused(tmp_path):
    path = declared_tiff(tmp_path / "short.tif", 4096, 4096, tile=1024)
    _patch_tag(path, "ImageWidth", 8192)  # now needs 32 tiles, the file has 16 offsets
    with pytest.raises(SlideOpenError, match="stores 16 data offsets"):
        open_slide(path)


def test_tissue_mask_of_huge_unpyramided_slide_is_bounded(tmp_path, monkeypatch):
    """A plausible 200k × 200k single-level TIFF: the mask decodes a bounded sample of
    tiles, never the whole level (the old code read every level-0 pixel: hours)."""
    from napari_wsi_detect.slide import tiff_backend
    from napari_wsi_detect.slide.tissue import compute_tissue_mask

    raw = 200_000 * 200_000 * 3
    path = declared_tiff(tmp_path / "big.tif", 200_000, 200_000, tile=1024,
                         pad_bytes=raw // 90_000)
    decoded = []
    original = tiff_backend._PageReader._decode_one

    def counting(self, index):
        decoded.append(index)
        if len(decoded) > 5000:
            raise AssertionError("the tissue mask decodes far too many tiles")
        return original(self, index)

    monkeypatch.setattr(tiff_backend._PageReader, "_decode_one", counting)
    with open_slide(path) as slide:
        assert slide.levels[0].shape == (200_000, 200_000)
        tm = compute_tissue_mask(slide)
    assert tm.slide_shape == (200_000, 200_000)
    assert max(tm.shape) <= 2048 and tm.is_empty
    assert len(decoded) <= 1000


def test_sampled_tissue_mask_agrees_with_full_read(phantom_small, monkeypatch):
    """The sparse-sample fallback still finds the tissue where the full read does."""
    from napari_wsi_detect.slide import tissue

    with open_slide(phantom_small) as slide:
        full = tissue.compute_tissue_mask(slide)
        monkeypatch.setattr(tissue, "MAX_TISSUE_READ_PX", 1)
        sampled = tissue.compute_tissue_mask(slide)
    assert not sampled.is_empty
    assert abs(sampled.tissue_fraction - full.tissue_fraction) < 0.1


def test_tissue_mask_without_mpp_respects_2048_cap(tmp_path):
    """No pixel size: the mask's longest side stays <= 2048 (was 3000 here: the level
    factor was floored)."""
    from napari_wsi_detect.slide.tissue import UNKNOWN_MPP_SIDE, compute_tissue_mask

    img = np.full((3000, 3000, 3), 240, np.uint8)
    img[1000:2000, 1000:2000] = (180, 90, 160)
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib")
    with open_slide(path) as slide:
        assert slide.mpp is None and slide.objective_power is None
        tm = compute_tissue_mask(slide)
    assert max(tm.shape) <= UNKNOWN_MPP_SIDE
    assert 0.05 < tm.tissue_fraction < 0.2


def test_greyscale_slide_needs_rgb(tmp_path, capsys):
    from napari_wsi_detect.slide.tissue import compute_tissue_mask

    grey = np.full((2048, 2048), 230, np.uint8)
    grey[500:1500, 500:1500] = 120
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey, tile=(256, 256))
    with open_slide(path) as slide:
        assert slide.colour == "greyscale"
        with pytest.raises(EmptyTissueError, match="greyscale.*RGB") as info:
            compute_tissue_mask(slide, require_tissue=True)
    assert "no tissue found" not in str(info.value) and str(path) in str(info.value)
    rc, out, _ = _cli(["info", str(path)], capsys)
    assert rc == 0 and "greyscale" in out and "RGB" in out


def test_rgb_slide_is_colour(phantom_small):
    with open_slide(phantom_small) as slide:
        assert slide.colour == "rgb"


def test_zero_width_tiff(tmp_path, capsys):
    path = tmp_path / "w0.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    _patch_tag(path, "ImageWidth", 0)
    with pytest.raises(SlideOpenError, match=r"0 x 64 px image") as info:
        open_slide(path)
    assert str(path) in str(info.value)
    rc, _, err = _cli(["info", str(path)], capsys)
    assert rc == 2 and "Traceback" not in err


def test_zero_tile_width_tiff(tmp_path):
    path = tmp_path / "t0.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), photometric="rgb",
                     tile=(256, 256))
    _patch_tag(path, "TileWidth", 0)
    with pytest.raises(SlideOpenError):
        open_slide(path)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint32])
def test_float_or_32bit_tiff_gets_our_message_not_libtiffs(tmp_path, capsys, dtype):
    """A tiled float32 TIFF used to fall through to OpenSlide, open, and fail on every
    read with libtiff's message while `info` exited 0."""
    path = tmp_path / "f.tif"
    data = (np.random.default_rng(0).random((512, 512, 3)) * 100).astype(dtype)
    tifffile.imwrite(path, data, tile=(256, 256), photometric="rgb")
    with pytest.raises(SlideOpenError, match="pixel type .* is not supported") as info:
        open_slide(path)
    assert "TIFFRGBAImageOK" not in str(info.value)
    rc, _, err = _cli(["info", str(path)], capsys)
    assert rc == 2 and "pixel type" in err and "Traceback" not in err


def test_associated_images_after_failed_openslide_read(tmp_path):
    """After one failed read OpenSlide refuses every call on the handle: the names stay
    listable and reading one is a SlideReadError, never a raw OpenSlideError."""
    path = fake_svs(tmp_path / "bad.svs")
    with open_slide(path) as slide:
        assert type(slide).__name__ == "OpenSlideSlide"
        names = slide.associated_names
        assert "label" in names
        with pytest.raises(SlideReadError):
            slide.read_region(0, 0, 0, 100, 100)
        assert slide.associated_names == names
        for name in names:
            with pytest.raises(SlideReadError, match=name):
                slide.associated_image(name)


def test_hostile_slides_never_raise_foreign_errors(tmp_path):
    """Sweep: each odd file is refused with SlideOpenError or opens and reads."""
    cases = {}
    cases["sparse_huge.tif"] = declared_tiff(tmp_path / "sparse_huge.tif", 10**6, 10**6,
                                             tile=4096, sparse=True)
    t16 = tmp_path / "u16.tif"
    tifffile.imwrite(t16, np.full((256, 256, 3), 40000, np.uint16), photometric="rgb")
    cases["u16.tif"] = t16
    zero_h = tmp_path / "h0.tif"
    tifffile.imwrite(zero_h, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    _patch_tag(zero_h, "ImageLength", 0)
    cases["h0.tif"] = zero_h
    for name, path in cases.items():
        try:
            with open_slide(path) as slide:
                slide.read_region(0, 0, 0, 16, 16)
        except WsiDetectError:
            pass
        except Exception as exc:  # pragma: no cover - the failure being tested
            pytest.fail(f"{name}: {type(exc).__name__}: {exc}")


def test_mpp_sanity_of_declared_ratio_keeps_real_slides(phantom_small):
    """The declared-size check does not refuse ordinary slides (compression ratios of
    real scans are far below the bound)."""
    from napari_wsi_detect.slide.tiff_backend import _MAX_DECLARED_RATIO

    with open_slide(phantom_small) as slide:
        assert slide.levels[0].shape[0] > 0
    assert _MAX_DECLARED_RATIO >= 10_000
    assert math.isfinite(_MAX_DECLARED_RATIO)


# silence "imported but unused" for names used only by later sections
_ = json


# ----------------------------------------------------------------------------------------
# package namespace


def test_from_package_import_annotations_is_the_subpackage():
    """`from __future__ import annotations` in the package __init__ used to shadow the
    `annotations` subpackage. Run in a fresh interpreter: importing the subpackage
    anywhere earlier in the session would hide the bug."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_wsi_detect import annotations\n"
        "assert annotations.__name__ == 'napari_wsi_detect.annotations', annotations\n"
        "assert callable(annotations.read_geojson)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_package_name_shadows_a_subpackage():
    """In a fresh interpreter, no package binds a name that is one of its submodules
    but something else, and every lazy name resolves."""
    import subprocess
    import sys

    code = r'''
import importlib, pkgutil
import napari_wsi_detect as root
problems = []
packages = [root.__name__] + [m.name for m in pkgutil.walk_packages(root.__path__, root.__name__ + ".")
                              if m.ispkg]
for name in packages:
    pkg = importlib.import_module(name)
    for sub in pkgutil.iter_modules(pkg.__path__):
        bound = pkg.__dict__.get(sub.name)
        if bound is not None and getattr(bound, "__name__", None) != f"{name}.{sub.name}":
            problems.append(f"{name}.{sub.name} is shadowed by {bound!r}")
for name in packages:
    pkg = importlib.import_module(name)
    for attr in getattr(pkg, "_LAZY", {}):
        try:
            getattr(pkg, attr)
        except Exception as exc:
            problems.append(f"{name}.{attr}: {type(exc).__name__}: {exc}")
assert not problems, problems
'''
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# ----------------------------------------------------------------------------------------
# model files


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    folder = tmp_path_factory.mktemp("model")
    _, json_path = save_model(ScanNetFCN(width=0.0625), folder / "m")
    return json_path


def _edited_model(saved_model, tmp_path, edit) -> Path:
    import shutil

    config = json.loads(saved_model.read_text())
    edit(config)
    shutil.copy(saved_model.with_suffix(".safetensors"), tmp_path / "m.safetensors")
    out = tmp_path / "m.json"
    out.write_text(json.dumps(config))
    return out


def _set(path: str, value):
    def edit(config):
        *parents, last = path.split(".")
        target = config
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return edit


BAD_CONFIGS = [
    ("patch", "abc", "whole number in [1, 8192]"),
    ("patch", 244.5, "whole number"),
    ("stride", -32, "whole number in [1, 8192]"),
    ("mpp", "0.25um", r"number in (0.01, 20] µm/px"),
    ("mpp", 0, r"number in (0.01, 20] µm/px"),
    ("mpp", float("nan"), "number in"),
    ("width", 1e5, r"number in (0, 4]"),
    ("width", 0, r"number in (0, 4]"),
    ("width", True, "number in"),
    ("in_channels", 3.5, "whole number in [1, 16]"),
    ("num_classes", 10**9, "whole number in [1, 1000]"),
    ("format_version", 99, "newer napari-wsi-detect"),
    ("thresholds.probability", "high", "number in [0, 1]"),
    ("thresholds.probability", 1.5, "number in [0, 1]"),
    ("thresholds.threshold", -0.1, "number in [0, 1]"),
    ("thresholds.opening_um", 1e9, "number in [0, 200] µm"),
    ("thresholds.min_area_um2", "big", "number in [0, 1e+07] µm²"),
    ("thresholds.other", [1], "finite number"),
    ("thresholds", [0.5], "object of slider defaults"),
    ("class_names", [1, 2], "list of strings"),
    ("architecture", 7, "architecture's name"),
    ("normalisation.std", [0.2, 0, 0.2], "above 0"),
    ("normalisation.mean", "grey", "3 numbers"),
    ("weights", "../m.safetensors", "inside it"),
    ("weights", "/etc/passwd", "inside it"),
    ("weights", "sub/../../m.safetensors", "inside it"),
    ("weights", 12, "weights file's name"),
    ("weights_sha256", "abc", "64 hexadecimal digits"),
]


@pytest.mark.parametrize(("field", "value", "rule"), BAD_CONFIGS,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_CONFIGS])
def test_bad_model_config_field_is_refused_before_building(saved_model, tmp_path, monkeypatch,
                                                           field, value, rule):
    from napari_wsi_detect.errors import ModelFileError
    from napari_wsi_detect.models import io

    path = _edited_model(saved_model, tmp_path, _set(field, value))
    monkeypatch.setattr(io, "build_model", lambda config: pytest.fail("built a network"))
    with pytest.raises(ModelFileError) as info:
        io.load_model(path)
    msg = str(info.value)
    assert str(path) in msg and repr(field.split(".")[-1])[1:-1] in msg
    assert rule in msg, msg
    # the cheap JSON-only check (the widget's model_problem, run_key) refuses it too
    with pytest.raises(ModelFileError):
        io.read_config(path)


def test_weights_outside_the_model_folder_refused_even_when_it_exists(saved_model, tmp_path):
    """`weights: ../x` used to load whatever file sat there (sha256 matching)."""
    import shutil

    from napari_wsi_detect.errors import ModelFileError
    from napari_wsi_detect.models.io import load_model

    inner = tmp_path / "inner"
    inner.mkdir()
    shutil.copy(saved_model.with_suffix(".safetensors"), tmp_path / "elsewhere.safetensors")
    config = json.loads(saved_model.read_text())
    config["weights"] = "../elsewhere.safetensors"
    (inner / "m.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="inside it"):
        load_model(inner / "m.json")
    config["weights"] = str(tmp_path / "elsewhere.safetensors")  # absolute
    (inner / "m.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="inside it"):
        load_model(inner / "m.json")


def test_weights_in_a_subfolder_of_the_json_loads(saved_model, tmp_path):
    import shutil

    from napari_wsi_detect.models.io import load_model

    (tmp_path / "w").mkdir()
    shutil.copy(saved_model.with_suffix(".safetensors"), tmp_path / "w" / "m.safetensors")
    config = json.loads(saved_model.read_text())
    config["weights"] = "w/m.safetensors"
    (tmp_path / "m.json").write_text(json.dumps(config))
    _, loaded = load_model(tmp_path / "m.json")
    assert Path(loaded["_weights_path"]) == tmp_path / "w" / "m.safetensors"


@pytest.mark.parametrize("thresholds", [
    {"probability": 0.7, "opening_um": 16.0},  # legacy key
    {"threshold": 0.6},  # today's key
    {"probability": 0.7, "threshold": 0.6},  # both (today's wins downstream)
    {"probability": 1, "min_area_um2": 0},  # integers are numbers
])
def test_model_thresholds_both_keys_load(saved_model, tmp_path, thresholds):
    from napari_wsi_detect.models.io import load_model

    path = _edited_model(saved_model, tmp_path, _set("thresholds", thresholds))
    _, config = load_model(path)
    assert config["thresholds"] == thresholds


def test_bundled_demo_model_config_is_valid():
    from napari_wsi_detect.models.io import BUNDLED_DIR, read_config

    for path in BUNDLED_DIR.glob("*.json"):
        read_config(path)


def test_save_model_refuses_a_bad_config(tmp_path):
    from napari_wsi_detect.errors import ModelFileError
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN

    with pytest.raises(ModelFileError, match="mpp"):
        save_model(ScanNetFCN(width=0.0625), tmp_path / "m", {"mpp": "0.25um"})
    assert not list(tmp_path.iterdir())


def test_deeply_nested_model_json(saved_model, tmp_path):
    from napari_wsi_detect.errors import ModelFileError
    from napari_wsi_detect.models.io import load_model

    path = tmp_path / "m.json"
    path.write_text('{"architecture": "scannet-fcn", "training": ' + "[" * 100_000
                    + "]" * 100_000 + "}")
    with pytest.raises(ModelFileError, match="nested too deeply"):
        load_model(path)
