"""`wsi-detect evaluate froc` on a folder written by `wsi-detect metastases` itself."""

from __future__ import annotations

import json

import torch

from napari_wsi_detect.api import detect_metastases
from napari_wsi_detect.cli import main
from napari_wsi_detect.models.io import save_model
from napari_wsi_detect.models.scannet import ScanNetFCN


def test_froc_reads_the_engines_run_folder(phantom_small, tmp_path, capsys):
    torch.manual_seed(0)
    weights, _ = save_model(ScanNetFCN(width=0.0625), tmp_path / "model", {"mpp": 0.243})
    result = detect_metastases(phantom_small, model=str(weights), alpha=1, device="cpu",
                               region=(0, 0, 1024, 1024))
    run = tmp_path / "run"
    result.write(run)
    mask = phantom_small.with_name(phantom_small.stem + ".tumour-mask.tif")
    rc = main(["evaluate", "froc", "--detections", str(run), "--truth", str(mask),
               "--json", str(tmp_path / "froc.json")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    froc = json.loads((tmp_path / "froc.json").read_text())["froc"]
    # The run folder was matched to the phantom's truth by the slide named in summary.json.
    assert froc["n_slides"] == 1 and froc["n_detections"] == len(result.regions)
