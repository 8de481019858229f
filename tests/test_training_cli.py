"""`wsi-detect train metastases`: flags generated from TrainConfig's field metadata keep
the names and defaults of the hand-written flags they replaced."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_wsi_detect.cli import build_parser, main
from napari_wsi_detect.training.metastases import TrainConfig

# The flags `train metastases` had when they were written by hand.
FLAGS = {
    "--slides", "--annotations", "--out", "--val-slides", "--val-annotations", "--width",
    "--steps", "--batch-size", "--lr", "--optimizer", "--class-probs", "--class-weights",
    "--workers", "--queue-size", "--seed", "--model-mpp", "--hard-negatives",
    "--hard-negative-steps", "--hnm-threshold", "--hnm-alpha", "--val-every",
    "--val-patches", "--checkpoint-every", "--resume", "--device", "--no-progress", "-h",
    "--help",
}


def _train_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tsub = next(a for a in sub.choices["train"]._actions if a.dest == "task")
    return tsub.choices["metastases"]


def test_flag_set_is_unchanged():
    flags = {s for a in _train_parser()._actions for s in a.option_strings}
    assert flags == FLAGS


def _config(argv):
    from napari_wsi_detect.commands.train import config_from_args

    args = build_parser().parse_args(["train", "metastases", "--slides", "s", "--out", "o",
                                      *argv])
    return args, config_from_args(TrainConfig, args)


def test_defaults_are_the_config_defaults():
    args, cfg = _config([])
    assert cfg == TrainConfig()
    assert args.annotations is args.val_slides is args.val_annotations is None
    assert not args.resume and not args.no_progress


def test_every_flag_reaches_the_config():
    _, cfg = _config([
        "--width", "0.25", "--steps", "7", "--batch-size", "3", "--lr", "0.5",
        "--optimizer", "adam", "--class-probs", "normal=0.3,tumour=0.7",
        "--class-weights", "1", "2.5", "--workers", "0", "--queue-size", "2", "--seed", "9",
        "--model-mpp", "0.5", "--hard-negatives", "--hard-negative-steps", "4",
        "--hnm-threshold", "0.8", "--hnm-alpha", "4", "--val-every", "5",
        "--val-patches", "6", "--checkpoint-every", "8", "--device", "cpu"])
    assert cfg == TrainConfig(
        width=0.25, steps=7, batch_size=3, lr=0.5, optimizer="adam",
        class_probs={"normal": 0.3, "tumour": 0.7}, class_weights=[1.0, 2.5], workers=0,
        queue_size=2, seed=9, model_mpp=0.5, hard_negatives=True, hard_negative_steps=4,
        hnm_threshold=0.8, hnm_alpha=4, val_every=5, val_patches=6, checkpoint_every=8,
        device="cpu")


def test_bad_values_are_refused(capsys):
    assert main(["train", "metastases", "--slides", "s", "--out", "o", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "metastases", "--slides", "s", "--out", "o",
                                   "--class-probs", "normal:1"])
    assert "normal=0.5,tumour=0.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "metastases", "--slides", "s", "--out", "o",
                                   "--optimizer", "lbfgs"])


def test_building_the_flags_does_not_import_torch():
    code = ("import sys; from napari_wsi_detect.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
