#!/usr/bin/env bash
# The recall arena on one GPU, in calls of under 10 minutes: every mixer, the five MQAR cells
# (difficulty and state axes), passkey, each swept over its family's learning rates with the
# protocol's extensions and second seeds (lra/leaderboard/sweep.py), 16 runs at a time. The
# arena's models are small, so each run is bound by its process launching kernels, not by the
# GPU: on an H200 (2026-12-04), 16 runs of 2000 steps at L 64 shared it at 110-150 s each, and
# a 395-s call finished 16 runs. The grid's runs still missing (docs/recall.md) take several
# calls; pass the store back in each time (ARENA_STORE, below).
#
#   bash scripts/device/recall_arena.sh OUT_DIR            # on the GPU machine, repository root
#   DRY_RUN=1 bash scripts/device/recall_arena.sh OUT_DIR  # on a CPU: the smoke grid, 2 steps,
#                                                          # first seed only (no sweep)
#
# The store OUT_DIR/recall_runs.json gets each run's record as it finishes, so whatever ran
# before the deadline (ARENA_SECONDS, default 540) comes back. A second call resumes where the
# first stopped when the store is put back first: ARENA_STORE=path/to/recall_runs.json.
# ARENA_ARGS adds options (say "--mixers attention fox --cells 128:8:128"): a run must finish
# inside the call, and 2000-step runs took 110-150 s each there, so the 6000-step cells (GDN,
# Mamba, Oryx, and every mixer at L=256) fit one call only just, if at all: at three times that,
# 330-450 s (an estimate, not yet measured), they need the per-run limit raised and the longest
# call, ARENA_SECONDS=580 ARENA_ARGS="--cells 256:16:64 --timeout 520" (the last --timeout wins).
# Runs cut off by the deadline lose nothing: each run in flight writes a checkpoint every 250
# steps into OUT_DIR/recall_checkpoints (lra.quick.fit), which comes back with the store; put
# that folder back with ARENA_CHECKPOINTS=path/to/recall_checkpoints and the next call, on the
# GPU or here, continues those runs (their records say from which step, resumed_at_step).
# Here, afterwards: lra leaderboard --suite recall --render --publish --merge OUT_DIR/recall_runs.json
# and, to go on with the unfinished runs on this machine: cp OUT_DIR/recall_checkpoints/*.pt
# runs/recall_checkpoints/ before the same lra leaderboard --suite recall command.
set -u
O=${1:?usage: scripts/device/recall_arena.sh OUT_DIR}
mkdir -p "$O"
O=$(cd "$O" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DRY=${DRY_RUN:-0}
DEADLINE=${ARENA_SECONDS:-540}
[ -n "${ARENA_STORE:-}" ] && cp "$ARENA_STORE" "$O/recall_runs.json"
export LRA_RECALL_CHECKPOINTS="$O/recall_checkpoints"
mkdir -p "$LRA_RECALL_CHECKPOINTS"
[ -n "${ARENA_CHECKPOINTS:-}" ] && cp "$ARENA_CHECKPOINTS"/*.pt "$LRA_RECALL_CHECKPOINTS"/ 2>/dev/null
if [ "$DRY" = 1 ]; then
    ARGS=(--quick --mixers attention --steps 2 --no-sweep --jobs 2 --device cpu --timeout 60)
else
    # 16 runs share the GPU: each is a small model, so the GPU is shared rather than saturated
    ARGS=(--jobs "${ARENA_JOBS:-16}" --device cuda --timeout 400)
fi
# shellcheck disable=SC2206  # ARENA_ARGS is a list of options, split on purpose
ARGS+=(${ARENA_ARGS:-})
echo "== recall arena: ${ARGS[*]} (deadline ${DEADLINE} s)" | tee "$O/arena.log"
timeout --signal=INT "$((DEADLINE - 20))" python3 -m lra.leaderboard --suite recall "${ARGS[@]}" \
    --out "$O/recall.md" >> "$O/arena.log" 2>&1
echo "== exit $? after ${SECONDS} s; the page from what finished:" | tee -a "$O/arena.log"
R=(--render --out "$O/recall.md")
[ "$DRY" = 1 ] && R+=(--quick --mixers attention --steps 2)
timeout 60 python3 -m lra.leaderboard --suite recall "${R[@]}" >> "$O/arena.log" 2>&1
python3 - "$O/recall_runs.json" <<'PY' | tee -a "$O/arena.log"
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
ok = [r for r in runs if r.get("status") == "ok"]
print(f"{len(runs)} records, {len(ok)} ok; wall per run "
      f"{min((r['wall_s'] for r in ok), default=0):.0f}-{max((r['wall_s'] for r in ok), default=0):.0f} s")
PY
