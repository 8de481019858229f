"""The hostile-input corpus (issue 13): every kind of bad input and bad luck, generated
in a scratch folder (nothing large is committed), each run through the `wsi-detect`
command line, and the rules each outcome is held to.

Used by tests/test_hostile_corpus.py (one parametrised test) and by
tests/bench_hostile_bounds.py (time and memory of each case). Kept free of pytest so the
same table can be run against an older checkout to count what it got wrong.

A case builds its inputs and returns the command line plus what must hold:

* ``refused`` (the default): exit 2, one stderr line ``wsi-detect: error: ...`` naming
  the file (``names``) and matching ``says`` (what is wrong / what to do), no traceback
  (only ``wsi-detect: warning: ...`` lines may come before it);
* ``usage``: refused by the argument parser (exit 2, the last line names the flag and
  the allowed range), before any work;
* ``accepted``: exit 0 (valid but unusual input, or a folder a kill left behind that the
  next run must finish).

For every case: files under ``keep`` are unchanged (a previous good result), and
nothing is left half-written (no temporaries, journals, stray .partial stores).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import traceback
import zlib
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------
# the world every case starts from


@dataclass
class World:
    root: Path
    slide: Path  # a small phantom (2048 x 1536 px)
    run: Path  # a finished run of it: the previous good result
    model: Path  # a small valid model (NAME.json beside NAME.safetensors)
    truth: Path  # the phantom's GeoJSON truth


def world_at(root: Path) -> World:
    """The world `make_world(root)` built earlier (for processes that reuse it)."""
    return World(root, root / "good.tif", root / "good-run", root / "model" / "m.json",
                 root / "good.geojson")


def make_world(root: Path) -> World:
    from napari_wsi_detect.cli import main
    from napari_wsi_detect.models.io import save_model
    from napari_wsi_detect.models.scannet import ScanNetFCN
    from napari_wsi_detect.phantom import write_phantom

    root.mkdir(parents=True, exist_ok=True)
    slide = root / "good.tif"
    write_phantom(slide, seed=3, size=(2048, 1536), mpp=0.243)
    run = root / "good-run"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        rc = main(["metastases", str(slide), "--out", str(run), "--quiet", "--device", "cpu"])
    assert rc == 0, "the good run failed"
    _, model = save_model(ScanNetFCN(width=0.0625), root / "model" / "m")
    return World(root, slide, run, Path(model), slide.with_suffix(".geojson"))


# ----------------------------------------------------------------------------------------
# generators


def declared_tiff(path: Path, width: int, height: int, tile: int = 1024,
                  sparse: bool = False) -> Path:
    """A classic TIFF whose one IFD declares `width` x `height` RGB px in `tile`² deflate
    tiles, every offset pointing at one small white tile (or, `sparse`, none)."""
    n = (-(-width // tile)) * (-(-height // tile))
    data = zlib.compress(np.full((tile, tile, 3), 255, np.uint8).tobytes())
    tile_off = 8
    bps_off = tile_off + len(data)
    offs_off = bps_off + 6
    cnt_off = offs_off + 4 * n
    ifd_off = cnt_off + 4 * n
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bps_off), (259, 3, 1, 8),
            (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile),
            (323, 3, 1, tile), (324, 4, n, offs_off), (325, 4, n, cnt_off)]
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", ifd_off))
        f.write(data)
        f.write(struct.pack("<3H", 8, 8, 8))
        f.write(np.full(n, 0 if sparse else tile_off, "<u4").tobytes())
        f.write(np.full(n, 0 if sparse else len(data), "<u4").tobytes())
        f.write(struct.pack("<H", len(tags)))
        for tag, typ, count, value in tags:
            if typ == 3 and count == 1:
                f.write(struct.pack("<HHIHH", tag, typ, count, value, 0))
            else:
                f.write(struct.pack("<HHII", tag, typ, count, value))
        f.write(struct.pack("<I", 0))
    return path


def patch_tag(path: Path, name: str, value: int) -> Path:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[name]
        offset, fmt = tag.valueoffset, {3: "<H", 4: "<I"}[int(tag.dtype)]
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def tiff(path: Path, array: np.ndarray, **kw: Any) -> Path:
    import tifffile

    tifffile.imwrite(path, array, **kw)
    return path


def corrupt_tiles(src: Path, dst: Path) -> Path:
    """A copy of `src` whose level-0 tiles are zeroed (the header stays valid)."""
    import tifffile

    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        for o, c in zip(page.dataoffsets, page.databytecounts, strict=True):
            data[o + 4:o + c] = b"\0" * (c - 4)
    dst.write_bytes(bytes(data))
    return dst


def square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def tumour_geojson(path: Path, rings: list, text: str | None = None) -> Path:
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [r]},
                 "properties": {"objectType": "annotation",
                                "classification": {"name": "Tumor"}}} for r in rings]
    path.write_text(text if text is not None else
                    json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def asap(path: Path, body: str, doctype: str = "") -> Path:
    path.write_text(f'<?xml version="1.0"?>{doctype}<ASAP_Annotations><Annotations>{body}'
                    "</Annotations><AnnotationGroups/></ASAP_Annotations>")
    return path


def asap_polygon(ring: list, kind: str = "Polygon") -> str:
    pts = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>' for j, (x, y) in enumerate(ring))
    return (f'<Annotation Name="a" Type="{kind}" PartOfGroup="_0" Color="#F4FA58">'
            f"<Coordinates>{pts}</Coordinates></Annotation>")


def edited_model(w: World, d: Path, edit: Callable[[dict], None] | None = None,
                 weights: bytes | None = None) -> Path:
    config = json.loads(w.model.read_text())
    if edit is not None:
        edit(config)
    folder = d / "model"
    folder.mkdir()
    out = folder / "m.json"
    out.write_text(json.dumps(config))
    target = folder / str(config.get("weights", "m.safetensors")) \
        if isinstance(config.get("weights"), str) else folder / "m.safetensors"
    if weights is None:
        shutil.copy(w.model.with_suffix(".safetensors"), folder / "m.safetensors")
    elif target.parent == folder:
        target.write_bytes(weights)
    return out


def nan_weights(w: World) -> bytes:
    from safetensors.numpy import load_file, save

    tensors = load_file(str(w.model.with_suffix(".safetensors")))
    return save({k: np.full_like(v, np.nan) for k, v in tensors.items()})


def reshaped_weights(w: World) -> bytes:
    from safetensors.numpy import load_file, save

    tensors = load_file(str(w.model.with_suffix(".safetensors")))
    name = next(iter(tensors))
    tensors[name] = np.zeros((3, 3), np.float32)
    return save(tensors)


def header_bomb() -> bytes:
    """A safetensors file whose 8-byte header length claims 2^60 bytes."""
    return struct.pack("<Q", 1 << 60) + b"{}"


def pickle_bytes() -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/wsi-detect-corpus-pwned",))

    return pickle.dumps(Evil())


def set_field(path: str, value: Any) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        target = config
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return edit


def copy_run(w: World, d: Path) -> Path:
    out = d / "run"
    shutil.copytree(w.run, out)
    return out


def gzip_bomb(path: Path, megabytes: int) -> Path:
    """`megabytes` MiB of spaces inside a valid JSON document, as concatenated gzip
    members (one 1 MiB member compressed once and repeated: a ~1000:1 bomb, built fast)."""
    block = gzip.compress(b" " * (1 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(b'{"type": "FeatureCollection", "features": ['))
        for _ in range(megabytes):
            f.write(block)
        f.write(gzip.compress(b"]}"))
    return path


# ----------------------------------------------------------------------------------------
# the table


@dataclass
class Setup:
    argv: list[str]
    names: str | None = None  # a file name the message must contain
    keep: list[Path] = field(default_factory=list)  # must be byte-identical after


@dataclass
class Case:
    id: str
    group: str
    build: Callable[[World, Path], Setup]
    says: str = ""  # regular expression the message must match (case-insensitive)
    expect: str = "refused"  # "refused" | "usage" | "accepted"
    subprocess: bool = False  # also run as a real process (the console entry point)


def _meta(w: World, d: Path, slide: Path, names: str | None = None, **kw: Any) -> Setup:
    """`wsi-detect metastases SLIDE` into a copy of the good run."""
    out = copy_run(w, d)
    argv = ["metastases", str(slide), "--out", str(out), "--quiet", "--device", "cpu"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return Setup(argv, names if names is not None else slide.name, [out])


def _info(slide: Path) -> Setup:
    return Setup(["info", str(slide)], slide.name)


def _froc(w: World, d: Path, truth: Path, detections: Path | None = None) -> Setup:
    if detections is None:
        detections = d / (truth.name.split(".")[0] + ".csv")
        detections.write_text("0.9,1000,1000\n0.2,50,50\n")
    report = d / "froc.json"
    return Setup(["evaluate", "froc", "--detections", str(detections), "--truth", str(truth),
                  "--json", str(report)], truth.name, [w.run])


def _with_model(w: World, d: Path, model: Path | str) -> Setup:
    s = _meta(w, d, w.slide, names=Path(str(model)).name, model=model)
    return s


CASES: list[Case] = []


def case(id: str, group: str, says: str = "", expect: str = "refused",
         subprocess: bool = False) -> Callable:
    def register(build: Callable[[World, Path], Setup]) -> Callable:
        CASES.append(Case(id, group, build, says, expect, subprocess))
        return build
    return register


# -- slides (info and metastases) ---------------------------------------------------------

SLIDES: dict[str, tuple[Callable[[World, Path], Path], str]] = {
    "missing": (lambda w, d: d / "absent.svs", "not found|no such|does not exist"),
    "zero-bytes": (lambda w, d: _bytes(d / "empty.tif", b""), "empty|0 bytes|not a"),
    "truncated-header": (lambda w, d: _bytes(d / "cut.tif", w.slide.read_bytes()[:1000]),
                         "truncated|damaged|cannot|not a"),
    "truncated-tiles": (lambda w, d: _bytes(d / "half.tif", w.slide.read_bytes()[
        : w.slide.stat().st_size * 6 // 10]), "truncated|damaged|cannot|not a|read"),
    "random-bytes.svs": (lambda w, d: _bytes(d / "noise.svs",
                                             np.random.default_rng(0).bytes(200_000)),
                         "not a|unsupported|cannot"),
    "png-renamed.svs": (lambda w, d: _png_as(d / "picture.svs"), "not|unsupported|png"),
    "text-renamed.tif": (lambda w, d: _bytes(d / "notes.tif", b"hello\n" * 100),
                         "not a|unsupported|cannot"),
    "folder-as-slide": (lambda w, d: _folder(d / "folder.svs"), "folder|directory|not a"),
    "huge-declared": (lambda w, d: declared_tiff(d / "huge.tif", 10**6, 10**6, 4096),
                      "declares a 1000000 x 1000000 px"),
    "sparse-huge": (lambda w, d: declared_tiff(d / "sparse.tif", 10**6, 10**6, 4096,
                                               sparse=True), "declares|offsets|damaged"),
    "too-few-offsets": (lambda w, d: patch_tag(declared_tiff(d / "short.tif", 4096, 4096),
                                               "ImageWidth", 8192), "data offsets"),
    "width-0": (lambda w, d: patch_tag(tiff(d / "w0.tif", np.zeros((64, 64, 3), np.uint8),
                                            photometric="rgb"), "ImageWidth", 0), "0 x 64 px"),
    "tile-width-0": (lambda w, d: patch_tag(tiff(d / "t0.tif", np.zeros((512, 512, 3), np.uint8),
                                                 photometric="rgb", tile=(256, 256)),
                                            "TileWidth", 0), "tile"),
    "float32": (lambda w, d: tiff(d / "f32.tif", np.ones((512, 512, 3), np.float32),
                                  tile=(256, 256), photometric="rgb"), "pixel type"),
    "uint32": (lambda w, d: tiff(d / "u32.tif", np.ones((512, 512, 3), np.uint32),
                                 tile=(256, 256), photometric="rgb"), "pixel type"),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _png_as(path: Path) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


for _name, (_make, _says) in SLIDES.items():
    case(f"info:{_name}", "slides", _says, subprocess=_name in ("missing", "truncated-header"))(
        lambda w, d, _make=_make: _info(_make(w, d)))
    case(f"metastases:{_name}", "slides", _says)(
        lambda w, d, _make=_make: _meta(w, d, _make(w, d)))


@case("metastases:uint16", "slides", "16-bit|pixel type|8-bit|no tissue")
def _u16(w, d):
    return _meta(w, d, tiff(d / "u16.tif", np.full((1024, 1024, 3), 40000, np.uint16),
                            photometric="rgb", tile=(256, 256)))


@case("metastases:greyscale", "slides", "greyscale.*RGB")
def _grey(w, d):
    grey = np.full((2048, 2048), 230, np.uint8)
    grey[500:1500, 500:1500] = 120
    return _meta(w, d, tiff(d / "grey.tif", grey, tile=(256, 256)))


@case("metastases:zeroed-tiles-into-another-slides-run", "slides", "another slide")
def _corrupt(w, d):
    """Same size as the good slide, decodes to garbage: must not resume its map."""
    return _meta(w, d, corrupt_tiles(w.slide, d / "broken.tif"), names="broken.tif")


@case("metastases:blank-slide", "slides", "no tissue|--no-tissue-mask")
def _blank(w, d):
    return _meta(w, d, tiff(d / "blank.tif", np.full((2048, 2048, 3), 255, np.uint8),
                            photometric="rgb", tile=(256, 256)))


# -- annotations (evaluate froc --truth) ----------------------------------------------------

@case("truth:huge-coordinates-geojson", "annotations", "no slide is that large")
def _huge_geo(w, d):
    return _froc(w, d, tumour_geojson(d / "Tumor_001.geojson", [square(1e12, 1e12, 5000)]))


@case("truth:huge-coordinates-asap", "annotations", "no slide is that large")
def _huge_asap(w, d):
    return _froc(w, d, asap(d / "Tumor_001.xml", asap_polygon(square(1e12, 1e12, 5000)[:-1])))


@case("truth:huge-coordinates-ncrf", "annotations", "no slide is that large")
def _huge_ncrf(w, d):
    path = d / "Tumor_001.json"
    path.write_text(json.dumps({"positive": [{"name": "p", "vertices": square(1e12, 1e12, 5)[:-1]}],
                                "negative": []}))
    return _froc(w, d, path)


@case("truth:nan-coordinates", "annotations", "NaN|finite|not a number")
def _nan(w, d):
    text = ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
            '{"type": "Polygon", "coordinates": [[[NaN, 0], [10, 0], [10, 10], [0, 0]]]}, '
            '"properties": {"classification": {"name": "Tumor"}}}]}')
    return _froc(w, d, tumour_geojson(d / "Tumor_001.geojson", [], text=text))


@case("truth:infinite-coordinates-asap", "annotations", "finite|inf|number|no slide")
def _inf(w, d):
    return _froc(w, d, asap(d / "Tumor_001.xml", asap_polygon([(0, 0), ("inf", 0), (5, 5)])))


@case("truth:extent-too-large", "annotations", "evaluation mask")
def _extent(w, d):
    return _froc(w, d, tumour_geojson(d / "Tumor_001.geojson",
                                      [square(0, 0, 5000), square(9e6, 9e6, 5000)]))


@case("truth:deep-nesting", "annotations", "nested too deeply")
def _deep(w, d):
    text = '{"type": "FeatureCollection", "features": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return _froc(w, d, tumour_geojson(d / "Tumor_001.geojson", [], text=text))


@case("truth:entity-expansion", "annotations", "entit|DTD|not allowed|forbidden")
def _laughs(w, d):
    doctype = ('<!DOCTYPE lolz [<!ENTITY lol "lol">'
               + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                         for i in range(1, 10)) + "]>")
    body = '<Annotation Name="&lol9;" Type="Polygon"><Coordinates/></Annotation>'
    return _froc(w, d, asap(d / "Tumor_001.xml", body, doctype))


@case("truth:external-entity", "annotations", "entit|DTD|not allowed|forbidden")
def _xxe(w, d):
    doctype = '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    body = '<Annotation Name="&x;" Type="Polygon"><Coordinates/></Annotation>'
    return _froc(w, d, asap(d / "Tumor_001.xml", body, doctype))


@case("truth:only-dots", "annotations", "only Dot annotations")
def _dots(w, d):
    return _froc(w, d, asap(d / "Tumor_001.xml", asap_polygon([(100, 100)], "Dot")))


@case("truth:not-json", "annotations", "JSON|cannot read|not valid")
def _notjson(w, d):
    return _froc(w, d, tumour_geojson(d / "Tumor_001.geojson", [], text="{'oops"))


@case("truth:binary-garbage-xml", "annotations", "XML|cannot read|not")
def _garbage_xml(w, d):
    path = d / "Tumor_001.xml"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    return _froc(w, d, path)


@case("truth:gzip-bomb", "annotations", "uncompresses to more than")
def _gzbomb(w, d):
    return _froc(w, d, gzip_bomb(d / "Tumor_001.geojson.gz", 600))


@case("truth:200k-features", "annotations", "200000 features.*--detections")
def _many(w, d):
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 2000, (200_000, 2))
    tail = ',"properties":{"classification":{"name":"Tumor"}}}'
    feats = ",".join(
        '{"type":"Feature","geometry":{"type":"Polygon","coordinates":'
        f"[[[{x:.1f},{y:.1f}],[{x + 4:.1f},{y:.1f}],[{x + 4:.1f},{y + 4:.1f}],"
        f"[{x:.1f},{y:.1f}]]]}}" + tail for x, y in xy)
    text = '{"type":"FeatureCollection","features":[' + feats + "]}"
    return _froc(w, d, tumour_geojson(d / "Tumor_001.geojson", [], text=text))


@case("detections:200k-features", "annotations", expect="accepted")
def _many_det(w, d):
    rng = np.random.default_rng(4)
    rows = rng.uniform(0, 1, (200_000, 3)) * [1, 2048, 1536]
    det = d / "good.csv"
    det.write_text("".join(f"{p:.4f},{x:.1f},{y:.1f}\n" for p, x, y in rows))
    s = _froc(w, d, w.truth, detections=det)
    return s


@case("detections:non-numeric-probability", "annotations", "max_probability|number")
def _det_prob(w, d):
    run = copy_run(w, d)
    data = json.loads((run / "regions.geojson").read_text())
    data["features"][0]["properties"]["measurements"]["max_probability"] = "high"
    (run / "regions.geojson").write_text(json.dumps(data))
    (run / "summary.json").unlink()  # else the summary's sha256 refuses the file first
    s = _froc(w, d, w.truth, detections=run)
    s.names = "regions.geojson"
    return s


@case("detections:mixed-output-set", "annotations", "does not belong.*run the detection again")
def _mixed(w, d):
    run = copy_run(w, d)
    (run / "regions.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    s = _froc(w, d, w.truth, detections=run)
    s.names = "regions.geojson"
    return s


# -- model files (metastases --model) -------------------------------------------------------

@case("model:pickle-as-safetensors", "models", "safetensors|not a|header|cannot")
def _pickle(w, d):
    folder = d / "model"
    folder.mkdir()
    shutil.copy(w.model, folder / "m.json")
    (folder / "m.safetensors").write_bytes(pickle_bytes())
    return _with_model(w, d, folder / "m.json")


@case("model:pytorch-checkpoint", "models", "safetensors|\\.pt|pickle|not a model")
def _pt(w, d):
    path = d / "model.pt"
    path.write_bytes(b"PK\x03\x04" + pickle_bytes())
    return _with_model(w, d, path)


@case("model:missing", "models", "not found|no model|does not exist|cannot find")
def _missing_model(w, d):
    return _with_model(w, d, d / "nothing.json")


@case("model:weights-missing", "models", "weights|safetensors|not found|missing")
def _no_weights(w, d):
    folder = d / "model"
    folder.mkdir()
    shutil.copy(w.model, folder / "m.json")
    return _with_model(w, d, folder / "m.json")


@case("model:truncated-weights", "models", "safetensors|truncated|damaged|cannot")
def _trunc_weights(w, d):
    data = w.model.with_suffix(".safetensors").read_bytes()
    return _with_model(w, d, edited_model(w, d, weights=data[: len(data) // 2]))


@case("model:header-bomb", "models", "safetensors|header|damaged|cannot")
def _bomb(w, d):
    return _with_model(w, d, edited_model(w, d, weights=header_bomb()))


def _no_sha(config: dict) -> None:  # else the weights' sha256 refuses the file first
    config.pop("weights_sha256", None)


@case("model:wrong-shapes", "models", "shape|does not fit|missing|unexpected")
def _shapes(w, d):
    s = _with_model(w, d, edited_model(w, d, _no_sha, weights=reshaped_weights(w)))
    s.names = "m.safetensors"
    return s


@case("model:nan-weights", "models", "non-finite|NaN")
def _nanw(w, d):
    model = edited_model(w, d, _no_sha, weights=nan_weights(w))
    s = _meta_into(w, d / "fresh", names="'m'", model=model)  # the model's name
    s.keep = [w.run]
    return s


@case("model:wrong-task", "models", "task|not a model for|metastases")
def _task(w, d):
    return _with_model(w, d, edited_model(w, d, set_field("task", "mitosis")))


@case("model:json-not-json", "models", "JSON|cannot read")
def _badjson(w, d):
    folder = d / "model"
    folder.mkdir()
    (folder / "m.json").write_text("{broken")
    shutil.copy(w.model.with_suffix(".safetensors"), folder / "m.safetensors")
    return _with_model(w, d, folder / "m.json")


for _field, _value, _rule in [
    ("patch", "abc", "whole number"), ("stride", -32, "whole number"),
    ("mpp", "0.25um", "number in"), ("mpp", float("nan"), "number in"),
    ("width", 1e5, "number in"), ("num_classes", 10**9, "whole number"),
    ("thresholds.threshold", 1.5, "number in"), ("normalisation.std", [0.2, 0, 0.2], "above 0"),
    ("weights", "../m.safetensors", "inside it"), ("weights", "/etc/passwd", "inside it"),
    ("format_version", 99, "newer"), ("architecture", 7, "architecture"),
]:
    case(f"model:config-{_field}={_value!r}", "models", _rule)(
        lambda w, d, f=_field, v=_value: _with_model(w, d, edited_model(w, d, set_field(f, v))))


# -- output folders (metastases --out) ------------------------------------------------------

def _meta_into(w: World, out: Path, names: str | None = None, **kw: Any) -> Setup:
    argv = ["metastases", str(w.slide), "--out", str(out), "--quiet", "--device", "cpu"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return Setup(argv, names if names is not None else out.name)


@case("out:is-a-file", "out", "is a file")
def _out_file(w, d):
    (d / "out.txt").write_text("x")
    s = _meta_into(w, d / "out.txt")
    s.keep = [d / "out.txt"]
    return s


@case("out:parent-is-a-file", "out", "cannot create|not a directory")
def _out_parent(w, d):
    (d / "file").write_text("x")
    return _meta_into(w, d / "file" / "run", names="file")


@case("out:summary-is-a-folder", "out", "is a folder")
def _out_summary(w, d):
    out = copy_run(w, d)
    (out / "summary.json").unlink()
    (out / "summary.json").mkdir()
    s = _meta_into(w, out, names="summary.json")
    s.keep = [out]
    return s


@case("out:heatmap-is-a-file", "out", "is a file")
def _out_store(w, d):
    out = d / "run"
    out.mkdir()
    (out / "heatmap.zarr").write_text("x")
    s = _meta_into(w, out, names="heatmap.zarr")
    s.keep = [out]
    return s


@case("out:locked-by-another-run", "out", "another run is writing", subprocess=True)
def _out_locked(w, d):
    import fcntl

    out = copy_run(w, d)
    fd = os.open(out / ".wsi-detect.lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a concurrent run holds it
    _HELD.append(fd)
    s = _meta_into(w, out)
    s.keep = [out]
    return s


@case("out:other-model-store", "out", "different.*--overwrite")
def _out_other(w, d):
    out = copy_run(w, d)
    s = _meta_into(w, out, names="heatmap.zarr", model=w.model)
    s.keep = [out]
    return s


@case("out:damaged-store-description", "out", "--overwrite")
def _out_damaged(w, d):
    out = copy_run(w, d)
    (out / "heatmap.zarr" / "zarr.json").write_text("{not json")
    s = _meta_into(w, out, names="heatmap.zarr")
    s.keep = [out]
    return s


@case("out:damaged-commit-journal", "out", expect="accepted")
def _out_journal(w, d):
    """A run rewrites the whole set, so it drops an unreadable journal."""
    out = copy_run(w, d)
    (out / ".wsi-detect.commit.json").write_text("{half")
    return _meta_into(w, out)


@case("detections:damaged-commit-journal", "annotations", "damaged.*run the detection again")
def _det_journal(w, d):
    out = copy_run(w, d)
    (out / ".wsi-detect.commit.json").write_text("{half")
    s = _froc(w, d, w.truth, detections=out)
    s.names = ".wsi-detect.commit.json"
    s.keep = [out]
    return s


@case("out:damaged-chunk", "out", expect="accepted")
def _out_chunk(w, d):
    out = copy_run(w, d)
    chunk = out / "heatmap.zarr" / "prob" / "c" / "0" / "1"
    chunk.write_bytes(chunk.read_bytes()[:20])
    return _meta_into(w, out)


@case("out:killed-after-commit", "out", expect="accepted")
def _out_committed(w, d):
    """What a kill right after the commit point leaves: journal + new members."""
    out = copy_run(w, d)
    shutil.copytree(out / "heatmap.zarr", out / "heatmap.zarr.partial")
    shutil.copy(out / "regions.geojson", out / ".regions.geojson.k.tmp")
    shutil.copy(out / "summary.json", out / ".summary.json.k.tmp")
    (out / ".wsi-detect.commit.json").write_text(json.dumps({"replace": [
        ["heatmap.zarr.partial", "heatmap.zarr", None],
        [".regions.geojson.k.tmp", "regions.geojson", None],
        [".summary.json.k.tmp", "summary.json", None]]}))
    return _meta_into(w, out)


@case("out:killed-before-commit", "out", expect="accepted")
def _out_uncommitted(w, d):
    out = copy_run(w, d)
    shutil.copytree(out / "heatmap.zarr", out / "heatmap.zarr.partial")
    (out / ".regions.geojson.k.tmp").write_text("half")
    (out / "heatmap.zarr.partial.copying").mkdir()
    return _meta_into(w, out)


_HELD: list[int] = []  # lock file descriptors the "locked" case holds until checked


# -- numbers -------------------------------------------------------------------------------

NUMBERS = [
    ("threshold", "nan"), ("threshold", "2"), ("threshold", "-0.1"), ("threshold", "abc"),
    ("alpha", "3"), ("opening-um", "1e9"), ("opening-um", "inf"), ("min-area-um2", "-5"),
    ("roi-cells", "0"), ("roi-cells", "-3"), ("batch-size", "0"), ("readers", "0"),
    ("region", "1,2,3"), ("region", "a,b,c,d"),
]
for _flag, _v in NUMBERS:
    case(f"number:--{_flag}={_v}", "numbers", _flag.split("-")[0], expect="usage",
         subprocess=_flag == "threshold" and _v == "nan")(
        lambda w, d, f=_flag, v=_v: Setup(
            ["metastases", str(w.slide), "--out", str(copy_run(w, d)), "--quiet", f"--{f}", v],
            None, [d / "run"]))


@case("number:--region-outside-the-slide", "numbers", "region.*outside the slide")
def _region_out(w, d):
    return _meta(w, d, w.slide, names="", region="900000,900000,100,100")


@case("number:--region-negative-size", "numbers", "region.*empty")
def _region_neg(w, d):
    return _meta(w, d, w.slide, names="", region="0,0,-100,-100")


@case("number:--region-huge", "numbers", expect="accepted")
def _region_huge(w, d):
    """Clipped to the slide: the whole slide, into a fresh folder."""
    return _meta_into(w, d / "fresh", region=f"0,0,{10**15},{10**15}")


for _args, _says in [(["--size", "0", "0"], "size"), (["--size", "1000000", "1000000"], "size"),
                     (["--mpp", "nan"], "mpp"), (["--mpp", "-1"], "mpp"),
                     (["--lesions", "-1", "0", "0"], "lesions"), (["--seed", "x"], "seed")]:
    case(f"number:phantom {' '.join(_args)}", "numbers", _says, expect="usage")(
        lambda w, d, a=_args: Setup(["phantom", str(d / "ph.tif"), "--quiet", *a], None))

case("number:evaluate --mpp nan", "numbers", "mpp", expect="usage")(
    lambda w, d: Setup(["evaluate", "froc", "--detections", str(w.run), "--truth", str(w.truth),
                        "--mpp", "nan"], None))


# ----------------------------------------------------------------------------------------
# running a case and judging it


HALF_WRITTEN = (".tmp", ".partial", ".copying", ".old", ".wsi-detect.commit.json")


def _digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) \
            if p.exists() else []
        for f in files:
            if f.name == ".wsi-detect.lock":
                continue
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
        if not files:
            out[str(p)] = "absent" if not p.exists() else "empty"
    return out


def _listing(d: Path) -> set[str]:
    return {str(p) for p in d.rglob("*")}


@dataclass
class Outcome:
    id: str
    rc: int | None
    stderr: str
    problems: list[str]
    seconds: float = 0.0

    @property
    def traceback(self) -> bool:
        return any(p.startswith("traceback") for p in self.problems)

    @property
    def data_loss(self) -> bool:
        return any(p.startswith(("changed", "half-written")) for p in self.problems)


class CaseTimeout(BaseException):
    """A case ran longer than the table allows (see `main --timeout`)."""


def run_case(c: Case, w: World, d: Path, real_process: bool = False,
             timeout: int = 0) -> Outcome:
    """Build `c` in the empty folder `d`, run it, and list what broke the rules. With
    `timeout` (seconds, in-process only) a case still running then is stopped."""
    import re
    import signal
    import time

    d.mkdir(parents=True, exist_ok=True)
    setup = c.build(w, d)
    before = _digest(setup.keep)
    listing = _listing(d)
    t = time.perf_counter()
    if real_process:
        import subprocess

        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from napari_wsi_detect.cli import main; "
             "sys.exit(main(sys.argv[1:]))", *setup.argv],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        rc, err = proc.returncode, proc.stderr
    else:
        from napari_wsi_detect.cli import main

        def stop(signum: int, frame: Any) -> None:
            raise CaseTimeout(f"still running after {timeout} s")

        if timeout:
            signal.signal(signal.SIGALRM, stop)
            signal.alarm(timeout)
        out_buf, err_buf = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out_buf), redirect_stderr(err_buf):
                rc = main(setup.argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - the failure being counted
            rc = None
            err_buf.write(traceback.format_exc())
        finally:
            if timeout:
                signal.alarm(0)
        err = err_buf.getvalue()
    seconds = time.perf_counter() - t
    while _HELD:
        os.close(_HELD.pop())
    problems = []
    if "CaseTimeout" in err or "MemoryError" in err:
        problems.append("unbounded: " + ("ran past the time limit" if "CaseTimeout" in err
                                         else "MemoryError under the memory limit"))
    elif rc is None or "Traceback" in err:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        problems.append(f"traceback: {last[:200]}")
    lines = [line for line in err.splitlines() if line.strip()]
    if c.expect == "accepted":
        if rc != 0:
            problems.append(f"exit {rc} for an acceptable input: {err.strip()[-300:]}")
    elif c.expect == "usage":
        if rc != 2:
            problems.append(f"exit {rc}, not 2")
        if not lines or "error:" not in lines[-1] or not re.search(c.says, lines[-1], re.I):
            problems.append(f"argument error does not name {c.says!r}: {lines[-1:]}")
    else:
        if rc != 2:
            problems.append(f"exit {rc}, not 2: {err.strip()[-300:]}")
        elif not lines[-1].startswith("wsi-detect: error: ") or any(
                not line.startswith("wsi-detect: warning: ") for line in lines[:-1]):
            problems.append(f"not one 'wsi-detect: error:' line: {err.strip()[-300:]}")
        else:
            if setup.names and setup.names not in lines[-1]:
                problems.append(f"message does not name {setup.names}: {lines[-1][:300]}")
            if c.says and not re.search(c.says, lines[-1], re.I):
                problems.append(f"message does not say {c.says!r}: {lines[-1][:300]}")
    if _digest(setup.keep) != before:
        problems.append("changed: a previous good result was modified")
    new = _listing(d) - listing
    # what a run leaves must be whole; an accepted run also cleans what it was given
    half = sorted(p for p in (_listing(d) if c.expect == "accepted" else new)
                  if Path(p).name.endswith(HALF_WRITTEN) or ".tmp" in Path(p).name)
    if c.expect != "accepted":  # a refusal writes nothing but (empty) folders
        half += sorted(p for p in new if Path(p).is_file() and Path(p).name != ".wsi-detect.lock")
    if half:
        problems.append(f"half-written: {half[:3]}")
    return Outcome(c.id, rc, err, problems, seconds)


def main(argv: list[str] | None = None) -> int:
    """Run every case against the napari_wsi_detect on sys.path and print a table:
    `python tests/hostile_corpus.py SCRATCH_DIR`."""
    import argparse
    import resource
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("scratch", nargs="?", type=Path)
    ap.add_argument("--timeout", type=int, default=0, help="seconds per case (0: none)")
    ap.add_argument("--limit-gb", type=float, default=0, help="address-space limit")
    args = ap.parse_args(argv)
    root = args.scratch or Path(tempfile.mkdtemp(prefix="hostile-corpus-"))
    w = make_world(root / "world")
    if args.limit_gb:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = []
    for i, c in enumerate(CASES):
        try:
            o = run_case(c, w, root / f"case{i:03d}", timeout=args.timeout)
        except Exception as exc:  # noqa: BLE001 - a case that cannot be built here
            o = Outcome(c.id, None, "", [f"not built: {type(exc).__name__}: {exc}"])
        results.append(o)
        flag = "ok" if not o.problems else "; ".join(o.problems)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10  # MiB, so far
        print(f"{c.group:12s} {c.id:45s} {o.seconds:6.2f}s {peak:6d}MiB {flag[:220]}",
              flush=True)
    tb = sum(o.traceback for o in results)
    loss = sum(o.data_loss for o in results)
    bad = sum(bool(o.problems) for o in results)
    unbounded = sum(any(p.startswith("unbounded") for p in o.problems) for o in results)
    print(f"\n{len(results)} inputs: {bad} break a rule, {tb} tracebacks, {loss} data loss, "
          f"{unbounded} unbounded (time/memory limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
