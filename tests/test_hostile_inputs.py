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


def test_tissue_mask_from_the_stored_thumbnail_when_no_level_is_small(tmp_path,
                                                                       monkeypatch):
    from napari_wsi_detect.slide import tissue

    path = fake_svs(tmp_path / "ok.svs", corrupt_first_tile=False)
    monkeypatch.setattr(tissue, "MAX_TISSUE_READ_PX", 1)
    with open_slide(path) as slide:
        assert "thumbnail" in slide.associated_names
        monkeypatch.setattr(slide, "read_region",
                            lambda *a: pytest.fail("read the slide, not its thumbnail"))
        tm = tissue.compute_tissue_mask(slide)
    assert tm.shape == (128, 128) and tm.downsample == pytest.approx(8.0)


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


# ----------------------------------------------------------------------------------------
# annotations and ground truth


def _square(x0, y0, side):
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def _tumour_geojson(path: Path, rings) -> Path:
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [r]},
                 "properties": {"objectType": "annotation",
                                "classification": {"name": "Tumor", "color": [200, 0, 0]}}}
                for r in rings]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _asap(path: Path, annotations) -> Path:
    """annotations: (type, [(x, y), ...]) pairs."""
    body = []
    for i, (kind, coords) in enumerate(annotations):
        pts = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>'
                      for j, (x, y) in enumerate(coords))
        body.append(f'<Annotation Name="a{i}" Type="{kind}" PartOfGroup="_0" Color="#F4FA58">'
                    f"<Coordinates>{pts}</Coordinates></Annotation>")
    path.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations>'
                    + "".join(body) + "</Annotations><AnnotationGroups/></ASAP_Annotations>")
    return path


@pytest.mark.parametrize("fmt", ["geojson", "asap", "ncrf"])
def test_huge_coordinates_are_an_annotation_error(tmp_path, fmt):
    """A polygon at 10¹² px used to allocate ~91 GiB while rasterising the truth."""
    from napari_wsi_detect.annotations.truth import read_tumour_polygons
    from napari_wsi_detect.errors import AnnotationError
    from napari_wsi_detect.evaluation.froc_io import load_truth_file

    ring = _square(1e12, 1e12, 5000)
    if fmt == "geojson":
        path = _tumour_geojson(tmp_path / "Tumor_001.geojson", [ring])
    elif fmt == "asap":
        path = _asap(tmp_path / "Tumor_001.xml", [("Polygon", ring[:-1])])
    else:
        path = tmp_path / "Tumor_001.json"
        path.write_text(json.dumps({"positive": [{"name": "p", "vertices": ring[:-1]}],
                                    "negative": []}))
    for reader in (read_tumour_polygons, load_truth_file):
        with pytest.raises(AnnotationError, match="no slide is that large") as info:
            reader(path)
        assert path.name in str(info.value)


def test_truth_extent_too_large_is_refused_before_allocating(tmp_path):
    """Coordinates within bounds but spanning 9 million px: refused by the mask-size
    bound, not by a MemoryError (or the OOM killer)."""
    from napari_wsi_detect.errors import AnnotationError
    from napari_wsi_detect.evaluation.froc_io import load_truth_file

    path = _tumour_geojson(tmp_path / "Tumor_002.geojson",
                           [_square(0, 0, 5000), _square(9_000_000, 9_000_000, 5000)])
    with pytest.raises(AnnotationError, match="evaluation mask"):
        load_truth_file(path)


def test_truth_far_from_the_origin_is_rasterised_in_its_window(tmp_path):
    """A small lesion at x = y = 2·10⁶ px needs a small mask, not (2·10⁶ / 32)² cells."""
    from napari_wsi_detect.evaluation.froc import (
        SlideEval,
        compute_froc,
        evaluation_mask_from_polygons,
    )
    from napari_wsi_detect.evaluation.froc_io import load_truth_file

    near = load_truth_file(_tumour_geojson(tmp_path / "a.geojson", [_square(4000, 4000, 4000)]))
    far = load_truth_file(_tumour_geojson(tmp_path / "b.geojson",
                                          [_square(2_004_000, 2_004_000, 4000)]))
    assert far.is_tumour and far.evaluation_mask.size < 40_000
    assert far.evaluation_mask.shape == near.evaluation_mask.shape
    assert (far.evaluation_mask == near.evaluation_mask).all()
    shift = 2_000_000 // 32
    assert far.mask_offset == (near.mask_offset[0] + shift, near.mask_offset[1] + shift)
    # the same labels as the full-frame reference
    labels, itc = evaluation_mask_from_polygons([np.array(_square(4000, 4000, 4000))])
    det = np.array([[0.9, 6000, 6000], [0.4, 100, 100]])
    ref = compute_froc([SlideEval("a", det, True, labels, itc)])
    got = compute_froc([SlideEval("a", det, True, near.evaluation_mask, near.itc_labels,
                                  mask_offset=near.mask_offset)])
    assert got.score == ref.score and got.n_tp == ref.n_tp == 1


def test_deeply_nested_json_is_an_annotation_error(tmp_path):
    """json.loads raises RecursionError on 100 000 nested arrays: it must not escape."""
    from napari_wsi_detect.annotations.camelyon_json import read_camelyon_json
    from napari_wsi_detect.annotations.geojson import read_geojson
    from napari_wsi_detect.annotations.truth import read_tumour_polygons
    from napari_wsi_detect.errors import AnnotationError, WsiDetectError
    from napari_wsi_detect.evaluation.froc_io import load_detections

    deep = '{"type": "FeatureCollection", "features": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for name in ("deep.geojson", "deep.json"):
        (tmp_path / name).write_text(deep)
    for reader, name in ((read_geojson, "deep.geojson"), (read_tumour_polygons, "deep.geojson"),
                         (read_camelyon_json, "deep.json"), (read_tumour_polygons, "deep.json")):
        with pytest.raises(AnnotationError, match="nested too deeply"):
            reader(tmp_path / name)
    run = tmp_path / "run"
    run.mkdir()
    (run / "regions.geojson").write_text(deep)
    with pytest.raises(WsiDetectError, match="nested too deeply"):
        load_detections([run])


def test_asap_with_only_dots_is_not_a_normal_slide(tmp_path, capsys):
    from napari_wsi_detect.annotations.truth import read_tumour_polygons
    from napari_wsi_detect.errors import AnnotationError

    path = _asap(tmp_path / "Tumor_003.xml", [("Dot", [(100, 100)]), ("Dot", [(200, 300)])])
    with pytest.raises(AnnotationError, match="only Dot annotations") as info:
        read_tumour_polygons(path)
    assert path.name in str(info.value)
    (tmp_path / "Tumor_003.csv").write_text("0.9,100,100\n")
    rc, out, err = _cli(["evaluate", "froc", "--detections", str(tmp_path / "Tumor_003.csv"),
                         "--truth", str(path)], capsys)
    assert rc == 2 and "only Dot annotations" in err and "FROC" not in out


# ----------------------------------------------------------------------------------------
# evaluation


def _run_folder(folder: Path, slide: str, detections, mpp=None) -> Path:
    folder.mkdir(parents=True)
    feats = []
    for p, x, y in detections:
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            _square(x - 50, y - 50, 100)]}, "properties": {"objectType": "detection",
            "measurements": {"max_probability": p, "peak_x": x, "peak_y": y}}})
    (folder / "regions.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                        "features": feats}))
    slide_info = {"path": slide}
    if mpp is not None:
        slide_info["mpp"] = mpp
    (folder / "summary.json").write_text(json.dumps({"slide": slide_info}))
    return folder


def _level5_mask(path: Path, shape, blocks, mpp=None, how="description") -> Path:
    """A level-5 label mask; `mpp` (level-0) recorded in the phantom's description or in
    the resolution tags."""
    mask = np.zeros(shape, np.uint8)
    for label, (r0, r1, c0, c1) in enumerate(blocks, start=1):
        mask[r0:r1, c0:c1] = label
    kwargs = {}
    if mpp is not None and how == "description":
        kwargs = {"description": json.dumps({"downsample": 32, "mpp": mpp * 32}),
                  "metadata": None}
    elif mpp is not None:
        res = 1e4 / (mpp * 32)
        kwargs = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, mask, **kwargs)
    return path


# A 16 x 16 cell lesion: 256 µm across at 0.5 µm/px, ~330 µm once grown by the 75 µm
# rule (a metastasis); at 0.243 µm/px 124 µm, ~200 µm grown (an ITC, ignored).
# Detections: one on it, one false positive far away.
_LESION = (25, 41, 25, 41)
_DETS = [(0.9, 33 * 32 + 5, 33 * 32 + 5), (0.5, 90 * 32, 90 * 32)]


def _csv(path: Path, rows) -> Path:
    path.write_text("prob,x,y\n" + "".join(f"{p},{x},{y}\n" for p, x, y in rows))
    return path


@pytest.mark.parametrize("how", ["description", "resolution"])
def test_froc_uses_the_pixel_size_the_mask_records(tmp_path, capsys, how):
    """At 0.5 µm/px the lesion counts; scoring it with the default 0.243 made it
    an ITC ("no lesion larger than an ITC")."""
    mask = _level5_mask(tmp_path / "s1.tumour-mask.tif", (100, 100), [_LESION], 0.5, how)
    csv = _csv(tmp_path / "s1.csv", _DETS)
    rc, out, err = _cli(["evaluate", "froc", "--detections", str(csv), "--truth", str(mask)],
                        capsys)
    assert rc == 0, err
    assert "lesions: 1 (+0 ITC ignored)" in out and "0.5 µm/px" in out


def test_froc_uses_the_pixel_size_the_run_records(tmp_path, capsys):
    mask = _level5_mask(tmp_path / "s1.tumour-mask.tif", (100, 100), [_LESION])
    run = _run_folder(tmp_path / "runs" / "s1", "/data/s1.tif", _DETS, mpp=0.5)
    rc, out, err = _cli(["evaluate", "froc", "--detections", str(run), "--truth", str(mask),
                         "--json", str(tmp_path / "out" / "froc.json")], capsys)
    assert rc == 0, err
    assert "lesions: 1 (+0 ITC ignored)" in out
    saved = json.loads((tmp_path / "out" / "froc.json").read_text())
    assert saved["pixel_sizes"]["s1"]["mpp"] == 0.5


def test_froc_refuses_contradicting_pixel_sizes_unless_overridden(tmp_path, capsys):
    mask = _level5_mask(tmp_path / "s1.tumour-mask.tif", (100, 100), [_LESION], 0.243)
    run = _run_folder(tmp_path / "runs" / "s1", "/data/s1.tif", _DETS, mpp=0.5)
    argv = ["evaluate", "froc", "--detections", str(run), "--truth", str(mask)]
    rc, out, err = _cli(argv, capsys)
    assert rc == 2 and "disagree" in err and "0.243" in err and "0.5" in err
    assert "FROC" not in out
    rc, out, err = _cli(argv + ["--mpp", "0.5"], capsys)
    assert rc == 0 and "overrides" in out and "lesions: 1 (+0 ITC ignored)" in out
    rc, out, err = _cli(argv + ["--mpp", "0.243"], capsys)  # the official rule, explicitly
    assert rc == 2 and "larger than an ITC" in err


def test_froc_without_recorded_pixel_size_says_it_uses_0_243(tmp_path, capsys):
    mask = _level5_mask(tmp_path / "s1.tumour-mask.tif", (100, 100), [(20, 70, 20, 70)])
    csv = _csv(tmp_path / "s1.csv", _DETS)
    rc, out, err = _cli(["evaluate", "froc", "--detections", str(csv), "--truth", str(mask)],
                        capsys)
    assert rc == 0, err
    assert "no pixel size recorded for s1" in out and "0.243" in out


@pytest.mark.parametrize("kind", ["tiled", "pyramid"])
def test_froc_refuses_a_slide_given_as_truth(tmp_path, capsys, phantom_small, kind):
    """An RGB slide as --truth was read as "everything is tumour" and printed a FROC."""
    import shutil

    if kind == "tiled":
        slide = tmp_path / "s1.tif"
        rgb = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
        tifffile.imwrite(slide, rgb, photometric="rgb")
    else:
        slide = tmp_path / "s1.tif"
        shutil.copy(phantom_small, slide)
    csv = _csv(tmp_path / "s1.csv", _DETS)
    rc, out, err = _cli(["evaluate", "froc", "--detections", str(csv), "--truth", str(slide)],
                        capsys)
    assert rc == 2 and "not a tumour mask" in err and "FROC" not in out


def test_mismatched_slide_ids_list_what_was_read(tmp_path, capsys):
    mask = _level5_mask(tmp_path / "Tumor_001_Mask.tif", (100, 100), [_LESION])
    csv = _csv(tmp_path / "tumor_01.csv", _DETS)
    rc, out, err = _cli(["evaluate", "froc", "--detections", str(csv), "--truth", str(mask)],
                        capsys)
    assert rc == 2
    assert "Detections were read for: tumor_01" in err
    assert "ground truth was read for: Tumor_001" in err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "abc", "1e9"])
def test_evaluate_mpp_is_checked_when_parsing(tmp_path, capsys, value):
    from napari_wsi_detect.cli import main

    with pytest.raises(SystemExit) as info:
        main(["evaluate", "froc", "--detections", str(tmp_path), "--mpp", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--mpp" in err and "[0.01, 20] µm/px" in err and "Traceback" not in err


def test_evaluate_outputs_checked_before_the_work(tmp_path, capsys):
    mask = _level5_mask(tmp_path / "s1.tumour-mask.tif", (100, 100), [(20, 70, 20, 70)])
    csv = _csv(tmp_path / "s1.csv", _DETS + [(0.3, 64 * 32, 10 * 32)])
    base = ["evaluate", "froc", "--detections", str(csv), "--truth", str(mask)]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for flag, target, message in (("--json", blocker / "froc.json", "is a file"),
                                  ("--plot", blocker / "sub" / "froc.png", "is a file"),
                                  ("--json", tmp_path, "is a folder")):
        rc, out, err = _cli(base + [flag, str(target)], capsys)
        assert rc == 2 and message in err and "FROC" not in out, (flag, err)
    # a missing folder is created
    rc, out, err = _cli(base + ["--json", str(tmp_path / "new" / "dir" / "f.json"),
                                "--plot", str(tmp_path / "new" / "p.png")], capsys)
    assert rc == 0, err
    assert (tmp_path / "new" / "dir" / "f.json").is_file() and (tmp_path / "new" / "p.png").is_file()


@pytest.mark.parametrize(("value", "where"), [
    ('"high"', "max_probability"), ("[0.5]", "max_probability"), ("true", "max_probability"),
    ('"NaN"', "max_probability"),
])
def test_non_numeric_probability_in_run_regions(tmp_path, value, where):
    from napari_wsi_detect.errors import WsiDetectError
    from napari_wsi_detect.evaluation.froc_io import load_detections

    run = _run_folder(tmp_path / "r", "/data/s.tif", [(0.5, 100, 100)])
    text = (run / "regions.geojson").read_text().replace('"max_probability": 0.5',
                                                         f'"max_probability": {value}')
    (run / "regions.geojson").write_text(text)
    with pytest.raises(WsiDetectError, match=where) as info:
        load_detections([run])
    assert "regions.geojson" in str(info.value)


@pytest.mark.parametrize("text", ["high,100,200\n0.5,1,2\n", "prob,x,y\nhigh,100,200\n",
                                  "prob,x,y\n0.5,abc,3\n", "prob,x,y\nnan,1,2\n"])
def test_non_numeric_probability_in_csv(tmp_path, text):
    """A first row "high,100,200" used to be skipped silently as if it were a header."""
    from napari_wsi_detect.errors import WsiDetectError
    from napari_wsi_detect.evaluation.froc_io import read_detection_csv

    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(WsiDetectError, match="s.csv"):
        read_detection_csv(path)
