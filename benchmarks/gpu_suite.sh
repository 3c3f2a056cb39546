#!/usr/bin/env bash
# The accuracy and inference benchmarks in one run on a one-GPU machine (16 cores or more).
#
#     bash benchmarks/gpu_suite.sh OUT_DIR
#
# Seven trainings run side by side, one process each, all with the same step budget:
# bench_accuracy.py (manual CoNSeP labels vs ST labels, at 0.5 and 0.25 µm/px; the classical
# baseline is scored once) and bench_classes.py (learned classes, fine types, no abstention;
# its "true partition" model is bench_accuracy's ST model at 0.5 µm/px: same labels, same
# classes). Then bench_infer.py times whole-slide inference on a 20k² real-pixel mosaic with the
# trained ST model (0.5 µm/px), once with tiles read in threads and once in processes.
# Environment: STEPS (default 3000), CAP_MINUTES (wall cap per training, default 6.5),
# DEVICE (default cuda), SIZE (default 20000), WSI_STNUC_DATA (the real data).
set -u
OUT=${1:?usage: gpu_suite.sh OUT_DIR}
STEPS=${STEPS:-3000}
CAP=${CAP_MINUTES:-6.5}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-20000}
WORKERS=${WORKERS:-2}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
data=${WSI_STNUC_DATA:-$here/../../shared/data}
tile=$(ls "$data"/nuclei/monuseg_train/images/*.png | head -n 1)
common=(--device "$DEVICE" --steps "$STEPS" --minutes "$CAP" --val-steps 300
        --bundle-compression zlib --threads 2 --seed 0)

t0=$(date +%s)
echo "gpu_suite: steps $STEPS, cap $CAP min, device $DEVICE, $(nproc) cores"
# The inference slide is built while the networks train (CPU only).
"$PY" - "$tile" "$OUT/bench_infer/mosaic_$(basename "${tile%.*}")_${SIZE}_zlib.tif" "$SIZE" \
    >"$OUT/mosaic.log" 2>&1 <<'EOF' &
import sys
from wsi_stnuc.slide.mosaic import mosaic_slide
from pathlib import Path
Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
mosaic_slide(sys.argv[1], sys.argv[2], int(sys.argv[3]), mpp=0.2527, compression="zlib")
EOF
mosaic=$!

pids=()
run() {  # name, script, args...
    local name=$1 script=$2
    shift 2
    "$PY" "$here/$script" "${common[@]}" --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
    echo "$name: exit $? after $(($(date +%s) - t0)) s"
}
run acc_manual_05 bench_accuracy.py --mpps 0.5 --models manual --workers "$WORKERS" &
pids+=($!)
run acc_st_05 bench_accuracy.py --mpps 0.5 --models st --no-baseline --workers "$WORKERS" &
pids+=($!)
run acc_manual_025 bench_accuracy.py --mpps 0.25 --models manual --no-baseline \
    --workers $((WORKERS + 1)) &
pids+=($!)
run acc_st_025 bench_accuracy.py --mpps 0.25 --models st --no-baseline \
    --workers $((WORKERS + 1)) &
pids+=($!)
for variant in a b c; do
    run "cls_$variant" bench_classes.py --variants "$variant" --workers "$WORKERS" &
    pids+=($!)
done
wait "${pids[@]}"
wait "$mosaic"
echo "mosaic: exit $? ($(tail -n 1 "$OUT/mosaic.log"))"

trained=$(ls "$OUT"/acc_st_05/mpp0.5/st/best.pt 2>/dev/null)
"$PY" "$here/bench_infer.py" ${trained:+--checkpoint "$trained"} --device "$DEVICE" --size "$SIZE" --rss-sizes \
    --source "$tile" --source-mpp 0.2527 --compression zlib --model-mpp 0.5 --width 32 \
    --batch-size 16 --workers "${INFER_WORKERS:-8}" --readers threads processes \
    --workdir "$OUT/bench_infer" >"$OUT/bench_infer.log" 2>&1
echo "bench_infer: exit $? after $(($(date +%s) - t0)) s"
