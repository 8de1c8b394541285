#!/usr/bin/env bash
# The second GPU run of 2026-11-26 (after scripts/device/session1.sh): the fla and
# mamba-ssm Triton kernels again (the first call had CC overwritten, which broke Triton's
# launcher build), then a Pathfinder-32 learnability probe at contour length 6 with the small
# `--quick` models, to size a CPU run. Same carried .whl/ and .kern/ as device/session1.sh.
#
#   bash scripts/device/session2.sh OUT_DIR
set -u
O=${1:?usage: device/session2.sh OUT_DIR}
R=/tmp/lb
D=/tmp/data6
mkdir -p "$O" "$R" "$D"
source scripts/device/env.sh
echo "== [$SECONDS s] background: Pathfinder-32 generation at contour length 6"
python3 -m lra.cli generate pathfinder --out "$D" --resolution 32 --contour-length 6 \
    --n-images 24000 --workers 12 --quiet > "$O/gen.log" 2>&1 &
GEN_PID=$!
echo "== [$SECONDS s] kernel parity and speed (GPU alone)"
timeout 170 python3 scripts/kernel_bench.py --ops gated_delta_rule gdn2 forgetting_attn ssd \
    --out "$O/kernel_bench.json" 2>&1 | tee "$O/kernel_bench.log" | grep -v '^{'
wait $GEN_PID
echo "== [$SECONDS s] Pathfinder probe, contour length 6, small models side by side"
lb() {  # name, then leaderboard arguments
    local name=$1; shift
    python3 -m lra.leaderboard --quick --tasks pathfinder --data-dir "$D" --threads 2 \
        --budget-minutes "${PROBE_MIN:-2.5}" --max-steps 4000 --setting gpu-probe-cl6 \
        --store "$R/$name.json" --out "$R/$name.md" --plot none --runs-dir "$R/runs" \
        --set data.init_args.contour_length=6 --set data.init_args.num_workers=2 "$@" \
        > "$R/$name.log" 2>&1
}
lb s4d-linear --mixers s4d --set model.model.encoder=linear \
    --note "quick model, linear pixel encoder, contour length 6, GPU probe" &
lb s4d-embed --mixers s4d --note "quick model, embedding, contour length 6, GPU probe" &
lb attention --mixers attention --note "quick model, embedding, contour length 6, GPU probe" &
lb s4d-wide --mixers s4d --set model.model.encoder=linear --set model.model.d_model=128 \
    --set model.model.n_layers=4 --note "d 128, 4 layers, linear encoder, contour 6, GPU probe" &
echo "== [$SECONDS s] CUDA tests (parity only; the GPU is shared now)"
python3 -m pytest -m cuda tests -q -rA -p no:cacheprovider -k "not selective_scan_kernel" \
    2>&1 | tail -n 30 | tee "$O/pytest_cuda.log"
wait
for f in "$R"/*.log; do echo "-- $f"; grep '\[leaderboard\]' "$f" | tail -n 2; done
tar --exclude='*.ckpt' -czf "$O/lb.tgz" -C "$R" .
echo "== [$SECONDS s] done"
