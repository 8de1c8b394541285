#!/usr/bin/env bash
# S4's own LRA ListOps recipe (configs/lra/s4/listops.yaml: 6 layers, d 256, batch 32) on one GPU
# for about 8 minutes: the time per epoch, against the s4 repository's published 15 min per
# epoch on a T4, and the validation accuracy after each epoch that fits.
#
#   bash scripts/device/prepare.sh                       # here: .whl/ (jsonargparse for lra fit)
#   bash scripts/device/s4_listops.sh OUT_DIR            # on the GPU machine, carrying .whl
#   DRY_RUN=1 bash scripts/device/s4_listops.sh OUT_DIR  # on a CPU: tiny data, model and steps
#
# Steps: generate ListOps with the LRA release's settings (no network there); one leaderboard
# run of the recipe (setting s4-listops, at the recipe's rate: no sweep) capped at S4_MINUTES
# (default 7) of training; scripts/device/epoch_clock.py samples its metrics as it trains and
# writes OUT_DIR/epochs.json (steps per second, seconds per epoch, accuracy per epoch).
set -u
O=${1:?usage: scripts/device/s4_listops.sh OUT_DIR}
mkdir -p "$O"
O=$(cd "$O" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DRY=${DRY_RUN:-0}
DATA=${S4_DATA:-/tmp/lra_listops}
# the wheels prepare.sh lays out: lra fit's Lightning CLI needs jsonargparse[signatures], which
# the GPU image lacks (this script stopped on it on 2026-12-04); carry .whl
. scripts/device/wheels.sh
[ "$DRY" != 1 ] && install_wheels
warn_without_lightning_cli
if [ "$DRY" = 1 ]; then
    DATA=$O/data
    GEN=(--n-train 64 --n-val 16 --n-test 16 --min-length 10 --max-length 40 --max-depth 3)
    RUN=(--max-steps 4 --budget-minutes 1 --timeout 120 --set model.model.d_model=16
         --set model.model.n_layers=1 --set data.init_args.seq_len=64
         --set data.init_args.batch_size=8 --set model.model.mixer_kwargs.l_max=64)
    PER_EPOCH=8
else
    GEN=(--workers 16)
    RUN=(--budget-minutes "${S4_MINUTES:-7}" --timeout 560)
    PER_EPOCH=3000  # 96000 training expressions / batch 32
fi
echo "== generate ListOps: ${GEN[*]}" | tee "$O/s4.log"
python3 -m lra.cli generate listops --out "$DATA" "${GEN[@]}" --quiet >> "$O/s4.log" 2>&1
python3 scripts/device/epoch_clock.py "$O/runs" "$O/epochs.json" --steps-per-epoch "$PER_EPOCH" &
CLOCK=$!
python3 -m lra.leaderboard --recipe s4 --tasks listops --no-sweep --setting s4-listops \
    --data-dir "$DATA" --runs-dir "$O/runs" --out "$O/leaderboard.md" --plot none \
    "${RUN[@]}" >> "$O/s4.log" 2>&1
echo "== leaderboard exit $? after ${SECONDS} s" | tee -a "$O/s4.log"
kill -INT "$CLOCK" 2>/dev/null
wait "$CLOCK"
cat "$O/epochs.json" | tee -a "$O/s4.log"
