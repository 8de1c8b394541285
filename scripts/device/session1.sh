#!/usr/bin/env bash
# One GPU run, as made for docs/kernels.md and the gpu-* settings of docs/leaderboard.md.
#
#   bash scripts/device/session1.sh OUT_DIR
#
# Expects .whl/ and .kern/ in the repository root, made by scripts/device/prepare.sh and
# carried with the call (device tool: carry [".whl", ".kern"]).
# As run on 2026-11-26 the background build's PID sat in a variable named CC, which the GPU
# image exports and Triton compiles with: every Triton kernel then failed (docs/kernels.md).
# It is CONV_BUILD now.
# Steps: install; JIT-build causal-conv1d for sm_90 in the background; generate ListOps;
# kernel-vs-reference parity and speed (scripts/kernel_bench.py, GPU alone); then the S4 and
# attention LRA recipes, shortened to a time budget, on the generated ListOps and Pathfinder,
# side by side on the one GPU, with the CUDA tests run meanwhile; everything lands in OUT_DIR.
set -u
O=${1:?usage: device/session1.sh OUT_DIR}
BUDGET_MIN=${BUDGET_MIN:-3.5}   # training minutes per LRA run
mkdir -p "$O"
R=/tmp/lb
D=/tmp/data
mkdir -p "$R" "$D"
source scripts/device/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$O/gpu.txt"
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton',
  triton.__version__, 'lightning', lightning.__version__)" | tee -a "$O/gpu.txt"

echo "== [$SECONDS s] background: causal-conv1d build, ListOps generation"
MAX_JOBS=4 python3 .kern/build_cc.py /tmp/ccbuild > "$O/ccbuild.log" 2>&1 &
CONV_BUILD=$!
python3 -m lra.cli generate listops --out "$D" --n-train 48000 --n-val 2000 --n-test 2000 \
    --workers 8 --quiet > "$O/gen.log" 2>&1 &
GEN=$!
if [ -f .kern/pf.tgz ]; then tar -xzf .kern/pf.tgz -C "$D"; else
    python3 -m lra.cli generate pathfinder --out "$D" --resolution 32 --contour-length 14 \
        --n-images 24000 --workers 6 --quiet >> "$O/gen.log" 2>&1; fi

echo "== [$SECONDS s] kernel parity and speed (GPU alone)"
timeout 170 python3 scripts/kernel_bench.py --ops gated_delta_rule gdn2 forgetting_attn ssd \
    --out "$O/kernel_bench.json" 2>&1 | tee "$O/kernel_bench.log" | grep -v '^{'
wait $GEN

echo "== [$SECONDS s] LRA runs, ${BUDGET_MIN} min of training each, side by side"
lb() {  # name, then leaderboard arguments
    local name=$1; shift
    python3 -m lra.leaderboard --data-dir "$D" --budget-minutes "$BUDGET_MIN" --threads 2 \
        --store "$R/$name.json" --out "$R/$name.md" --plot none --runs-dir "$R/runs" \
        --set data.init_args.num_workers=2 "$@" > "$R/$name.log" 2>&1
}
NOTE="recipe shortened to a ${BUDGET_MIN}-minute budget (max_steps, warmup <= 10%), 4-6 runs sharing one GPU"
lb s4-listops --recipe s4 --tasks listops --max-steps 3000 --setting gpu-short --note "$NOTE" &
lb s4-pathfinder --recipe s4 --tasks pathfinder --max-steps 3000 --setting gpu-short --note "$NOTE" &
lb att-listops --mixers attention --tasks listops --max-steps 3000 --setting gpu-short --note "$NOTE" &
lb att-pathfinder --mixers attention --tasks pathfinder --max-steps 3000 --setting gpu-short --note "$NOTE" &
# the CPU-sized model of `--quick`, to see how many steps Pathfinder needs at that size
lb s4d-pf-quick --quick --mixers s4d --tasks pathfinder --max-steps 4000 --setting gpu-quick-model \
    --set model.model.encoder=linear --note "the --quick model (d 64, 2 layers) with the linear pixel encoder, on the GPU" &

echo "== [$SECONDS s] CUDA tests (parity only; the GPU is shared now)"
while kill -0 $CONV_BUILD 2>/dev/null && [ $SECONDS -lt 400 ]; do sleep 5; done
if ! kill -0 $CONV_BUILD 2>/dev/null && wait $CONV_BUILD; then
    export PYTHONPATH=/tmp/ccbuild:$PWD/.kern/causal_conv1d-1.7.0:$PYTHONPATH; fi
tail -n 2 "$O/ccbuild.log"
# mamba-ssm's selective scan is a compiled extension with no wheel: its test cannot run here
python3 -m pytest -m cuda tests -q -rA -p no:cacheprovider -k "not selective_scan_kernel" \
    2>&1 | tail -n 40 | tee "$O/pytest_cuda.log"
if python3 -c "import causal_conv1d" 2>/dev/null; then
    python3 scripts/kernel_bench.py --ops causal_conv1d --lengths 1024 4096 --reps 5 \
        --out "$O/kernel_bench_conv.json" 2>&1 | grep -v '^{' | tail -n 4; fi

echo "== [$SECONDS s] waiting for the LRA runs"
wait
for f in "$R"/*.log; do echo "-- $f"; grep '\[leaderboard\]' "$f" | tail -n 3; done
tar --exclude='*.ckpt' -czf "$O/lb.tgz" -C "$R" .
echo "== [$SECONDS s] done"
