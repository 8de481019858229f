"""Reproduce the bundled H2G-Net tumour model (models/bundled/tumour.*).

    python scripts/train_tumour_model.py DATA_DIR RUN_DIR [--install]

1. writes the phantom slides (seeds below; train, validation and test seeds disjoint)
   into DATA_DIR/{train,val,test}/<group>/phantom-<seed>.tif, skipping existing ones;
   a group is a folder = the sampler's top level (scan resolution × tumour family);
2. trains with `wsi-detect train tumour` (CPU, one thread per process) into RUN_DIR;
3. with --install, writes RUN_DIR/tumour as models/bundled/tumour.{safetensors,json}
   with the weights stored in float16 (half the size; `load_model` builds the network
   in float32 and converts them).

Evaluation on the test split: scripts/evaluate_tumour_model.py. See docs/tumour-model.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

S = (4096, 3072)
# split -> group -> [(seed, (width, height), mpp, primary regions)]
SPLITS = {
    "train": {
        "mpp0972": [(1000, (6144, 4608), 0.972, 0), (1001, (6144, 4608), 0.972, 0)]
                   + [(s, S, 0.972, 0) for s in range(1002, 1006)],
        "mpp0486": [(s, S, 0.486, 0) for s in range(1100, 1102)],
        "primary0972": [(1200, S, 0.972, 1), (1201, S, 0.972, 2), (1202, S, 0.972, 1)],
        "primary0486": [(1210, S, 0.486, 1)],
    },
    "val": {
        "mpp0972": [(2000, S, 0.972, 0)], "mpp0486": [(2100, S, 0.486, 0)],
        "primary0972": [(2200, S, 0.972, 1)],
    },
    "test": {
        "mpp0972": [(s, S, 0.972, 0) for s in range(3000, 3003)],
        "mpp0486": [(3100, S, 0.486, 0)], "mpp0243": [(3200, (8192, 6144), 0.243, 0)],
        "primary0972": [(3300, S, 0.972, 1), (3301, S, 0.972, 2)],
        "primary0243": [(3310, (8192, 6144), 0.243, 1)],
    },
}
TRAIN_FLAGS = ["--warmup-steps", "80", "--steps", "70", "--refine-steps", "100",
               "--batch-size", "12", "--val-every", "50", "--checkpoint-every", "50",
               "--seed", "0"]


def write_data(root: Path) -> None:
    from napari_wsi_detect.phantom import write_phantom

    for split, groups in SPLITS.items():
        for group, items in groups.items():
            folder = root / split / group
            folder.mkdir(parents=True, exist_ok=True)
            for seed, size, mpp, primary in items:
                path = folder / f"phantom-{seed}.tif"
                if not path.exists():
                    print(f"writing {path}", flush=True)
                    write_phantom(path, seed=seed, size=size, mpp=mpp, primary=primary)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args()
    write_data(args.data)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cli = Path(sys.executable).with_name("wsi-detect")
    train = [str(p) for p in sorted((args.data / "train").iterdir())]
    val = [str(p) for p in sorted((args.data / "val").iterdir())]
    cmd = [str(cli), "train", "tumour", "--slides", *train, "--val-slides", *val,
           "--out", str(args.run), *TRAIN_FLAGS, "--no-progress"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    if args.install:
        install(args.run / "tumour.json")
    return 0


def install(model_json: Path) -> Path:
    from napari_wsi_detect.models.io import BUNDLED_DIR, load_model, save_model

    net, config = load_model(model_json)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["weights_dtype"] = "float16"
    weights, _ = save_model(net.half(), BUNDLED_DIR / "tumour", config)
    print(f"installed {weights} ({weights.stat().st_size / 2**20:.1f} MiB)")
    return weights


if __name__ == "__main__":
    raise SystemExit(main())
