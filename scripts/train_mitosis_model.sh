#!/bin/bash
# Reproduce the bundled mitosis model from ../shared/data (issue 10):
#
#   scripts/train_mitosis_model.sh [WORK_DIR]      # default: .mitosis-train (ignored by git)
#
# Trains SegMitos (FCN-8s, width 0.125) on the MIDOG 2021 crops with the MIDOG++ labels,
# holding out 15 % of each scanner's source images (split seed 0), single-threaded, with
# the flags the bundled model was trained with; a run interrupted (or stopped after ~25
# min of wall time) resumes exactly where it stopped when the script is run again. Then it
# copies WORK/mitoses.{safetensors,json} into src/napari_wsi_detect/models/bundled/.
# The bundled model: 800 steps of 8 mosaics of 256² px (the last 200 at lr/10; ~60 min
# on one busy core of the 2-core build machine, in three resumed runs).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$REPO/.mitosis-train}"
SHARED="$REPO/../shared/data"
export OMP_NUM_THREADS=1
resume=()
[ -f "$WORK/checkpoints/latest.json" ] && resume=(--resume)
"$REPO/.venv/bin/wsi-detect" train mitoses \
  --slides "$SHARED/mitosis-midog21" \
  --annotations "$SHARED/annotations/midogpp/MIDOG++.json" \
  --out "$WORK" --steps 800 --val-every 100 --checkpoint-every 50 --no-progress \
  "${resume[@]}"
cp "$WORK/mitoses.safetensors" "$WORK/mitoses.json" "$REPO/src/napari_wsi_detect/models/bundled/"
echo "bundled: $REPO/src/napari_wsi_detect/models/bundled/mitoses.{safetensors,json}"
