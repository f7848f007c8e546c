#!/usr/bin/env bash
# Scores the Grad-CAM maps of the runs of experiments/localisation.yaml against the tumour boxes
# (docs/explanations.md#do-the-maps-point-at-the-tumour); each result folder is kept once written.
#   bash experiments/localisation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
RUNS=experiments/runs
OUT=experiments/results/localisation
score() {  # NAME RUN [FLAGS...]: one scoring into $OUT/NAME, skipped when done
    local name=$1 run=$2
    shift 2
    if [ -d "$RUNS/$run" ] && [ ! -f "$OUT/$name/localisation.json" ]; then
        tumorclf explain --run "$RUNS/$run" --out "$OUT/$name" "$@"
    fi
}
FAST=vgg16_imagenet_grouped_128px_seed42_fast
LSO=vgg16_imagenet_lso-figshare+sartaj_128px_seed42_fast
CNN=simplecnn_scratch_grouped_128px_seed42
ROBUST=vgg16_imagenet_grouped_128px_seed42_robust
EXTERNAL=(--inputs $DATA/external/figshare_meningioma --boxes $DATA/external/figshare_meningioma/tumour_boxes.csv)
score fast_test "$FAST" --boxes $DATA/tumour_boxes.csv
score fast_meningioma "$FAST" "${EXTERNAL[@]}"
score lso_heldout "$LSO" --boxes $DATA/tumour_boxes.csv
score lso_val "$LSO" --boxes $DATA/tumour_boxes.csv --subset val
score lso_meningioma "$LSO" "${EXTERNAL[@]}"
score simplecnn_test "$CNN" --boxes $DATA/tumour_boxes.csv
score robust_test "$ROBUST" --boxes $DATA/tumour_boxes.csv
score robust_meningioma "$ROBUST" "${EXTERNAL[@]}"
