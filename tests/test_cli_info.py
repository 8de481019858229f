"""`wsi-detect info`: what a pathologist sees for a good slide and for a bad file."""

from __future__ import annotations

import json

from conftest import shared_file
from napari_wsi_detect.cli import main


def test_info_cmu1(capsys):
    rc = main(["info", str(shared_file("slides/cmu-1-small-region.svs"))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "mpp: 0.499 µm/px" in out
    assert "objective power: 20x" in out
    assert "vendor: aperio (read with OpenSlide)" in out
    assert "0: 2220 x 2967 px" in out and "native" in out
    assert "2: 555 x 742 px (w x h)  downsample 4  synthetic" in out
    assert "associated images: label (387 x 463), macro (1280 x 431), thumbnail" in out
    assert "tissue: " in out


def test_info_json_tcga_unknown_mpp(capsys):
    rc = main(["info", "--json", str(shared_file("slides/tcga-cr-7395-01a-01-ts1.svs"))])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert info["mpp"] is None
    assert [lv["synthetic"] for lv in info["levels"]] == [False, False, True, True]
    assert info["associated_images"] == {"thumbnail": [768, 956]}
    # Mostly tumour on a frozen section: tissue covers a good part of the slide.
    if info["tissue_fraction"] is not None:
        assert 0.2 < info["tissue_fraction"] < 0.95


def test_info_text_unknown_mpp(capsys):
    assert (
        main(["info", "--no-tissue", str(shared_file("slides/tcga-cr-7395-01a-01-ts1.svs"))]) == 0
    )
    out = capsys.readouterr().out
    assert "mpp: unknown" in out and "tissue" not in out


def test_info_broken_file_one_line_exit_2(capsys):
    rc = main(["info", str(shared_file("slides/broken.svs"))])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "not a slide" in lines[0] and "broken.svs" in lines[0]
