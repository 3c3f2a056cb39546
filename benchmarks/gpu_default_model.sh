#!/usr/bin/env bash
# The default model on a lent one-GPU machine, in one command of at most 10 minutes:
#
#     bash benchmarks/gpu_default_model.sh OUT_DIR
#
# Builds the sections and datasets (benchmarks/default_model.py prepare, CPU), trains the four
# networks of the accuracy table side by side with one step budget (EfficientNet-Lite0 UNet and
# NucleiNet, each on ST labels and on the manual twin), scores them on the held-out CoNSeP images
# and MoNuSeg organs, ships the ST EfficientNet as the default model and times whole-slide
# inference with it (bench_infer.py: end to end vs forward only, Mpx/s at 0.5 µm/px).
# OUT_DIR gets scores.json, the shipped weights and card, and the logs (bring them back).
# Environment: STEPS (default 3000), BATCH (default 16), WIDTH (default 16), DEVICE (cuda),
# SIZE (inference slide side, default 20000), WSI_STNUC_DATA (the real data).
set -u
OUT=${1:?usage: gpu_default_model.sh OUT_DIR}
STEPS=${STEPS:-3000}
BATCH=${BATCH:-16}
WIDTH=${WIDTH:-16}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-20000}
PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
work="$OUT/work"
mkdir -p "$work"
t0=$(date +%s)
"$PY" "$here/default_model.py" prepare st manual --work "$work" >"$OUT/prepare.log" 2>&1
echo "prepare: exit $? after $(($(date +%s) - t0)) s"
common=(--work "$work" --steps "$STEPS" --batch-size "$BATCH" --width "$WIDTH"
        --device "$DEVICE" --threads 2 --val-steps 300)
pids=()
for labels in st manual; do
    "$PY" "$here/default_model.py" train "effl0_$labels" --labels "$labels" "${common[@]}" \
        >"$OUT/train_effl0_$labels.log" 2>&1 &
    pids+=($!)
    "$PY" "$here/default_model.py" train "unet_$labels" --labels "$labels" --encoder unet \
        --lr 3e-3 "${common[@]}" >"$OUT/train_unet_$labels.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
echo "training: done after $(($(date +%s) - t0)) s"
"$PY" "$here/default_model.py" score effl0_st effl0_manual unet_st unet_manual --work "$work" \
    --device "$DEVICE" >"$OUT/score.log" 2>&1
cp "$work/scores.json" "$OUT/"
"$PY" "$here/default_model.py" ship effl0_st --work "$work" >>"$OUT/score.log" 2>&1
cp "$here/../wsi_stnuc/data/models/"stnuc-effl0-v1.* "$OUT/" 2>/dev/null
"$PY" "$here/bench_infer.py" --checkpoint "$work/runs/effl0_st/best.pt" --device "$DEVICE" \
    --size "$SIZE" --core 512 --halo 64 --batch-size 16 --rss-sizes --workdir "$OUT/infer" \
    >"$OUT/bench_infer.log" 2>&1
rm -rf "$OUT/infer"
echo "all: done after $(($(date +%s) - t0)) s"
