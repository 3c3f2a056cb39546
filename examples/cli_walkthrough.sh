#!/usr/bin/env bash
# The command-line route, stage by stage, on a SYNTHETIC paired bundle (H&E slide + Xenium
# output) that the package generates: what a user runs on their own Xenium + H&E data, with
# their own paths in place of the generated ones. About 3 minutes on 2 CPU cores.
#
#   bash examples/cli_walkthrough.sh [WORK_DIR]
set -euo pipefail
work=${1:-walkthrough_out}
mkdir -p "$work"

# 0. a synthetic bundle (your data: the Xenium output folder + the post-stain H&E slide)
python -c "from wsi_stnuc.synth.bundle import make_synthetic_bundle as m; m('$work/bundle', seed=1)"
slide="$work/bundle/slide.tif"
xenium="$work/bundle/xenium"

# 1. what is this slide?
wsi-stnuc info "$slide"
wsi-stnuc tissue "$slide" --out "$work/tissue.geojson"

# 2. labels from expression: registration (10x alignment CSV + automatic refinement), QC,
#    cell typing with a marker panel, image classes, LabelSet + a QuPath file to review it
wsi-stnuc labels --xenium "$xenium" --slide "$slide" \
    --alignment "$xenium/synthetic_he_imagealignment.csv" --panel "$work/bundle/panel.yaml" \
    --out "$work/labels.parquet" --qupath "$work/labels.geojson"

# 3. training patches at the model's resolution, then training: a step budget with pinned
#    threads, so the result is the same on a busy machine (CPU here; a GPU is used if present)
wsi-stnuc dataset --slide "$slide" --labels "$work/labels.parquet" --out "$work/dataset.zarr" --mpp 0.5
wsi-stnuc train "$work/dataset.zarr" --out "$work/model" --max-steps 300 --threads 2

# 4. whole-slide inference (a folder, a glob or a CSV manifest work the same), resumable;
#    results/slide.overview.png and results/report.html show what it found
wsi-stnuc infer --model "$work/model/best.pt" "$slide" --out "$work/results" --resume

# 5. score against the generator's truth (whole slide, including the training area); outputs
#    are named STEM-HASH (manifest.csv maps each slide's path to its name)
wsi-stnuc evaluate "$work/results"/slide-*.parquet "$work/bundle/truth.parquet" \
    --json "$work/scores.json"
