#!/usr/bin/env bash
# A named LRA leaderboard setting on one GPU, in calls of under 10 minutes. The default is
# `listops-lra`: every mixer on ListOps generated with the release's settings (500-2000 tokens,
# 96000 / 2000 / 2000), 2 layers, d 64, 2000 steps per run, the learning-rate sweep with its
# extensions and second seeds. On the 2-core CPU one such run takes an hour or more; the GPU
# takes 16 at a time. Each run is a small model, so each process, not the GPU, bounds it.
#
#   bash scripts/device/prepare.sh                       # here: .whl/ (jsonargparse for lra fit)
#   bash scripts/device/lra_grid.sh OUT_DIR              # on the GPU machine, carrying .whl
#   DRY_RUN=1 bash scripts/device/lra_grid.sh OUT_DIR    # on a CPU: two tiny runs, 2 steps each
#
# The store OUT_DIR/leaderboard_runs.json gets each run's record as it finishes, so whatever
# ran before the deadline (LRA_SECONDS, default 540) comes back. A later call resumes where this
# one stopped when the store is put back first: LRA_STORE=path/to/leaderboard_runs.json.
# LRA_SETTING picks another named setting (lra/leaderboard/runner.py SETTINGS); LRA_ARGS adds
# options (say "--mixers attention s4d"). A run must finish inside the call: LRA_BUDGET
# (default 6) caps each run's training minutes, and a run stopped by it says so in its row
# ("time cap"), never passing for a finished one. The data are generated there first, with
# every core (about 70 s for ListOps at the release's sizes on 16 cores).
# Here, afterwards: lra leaderboard --render --publish --merge OUT_DIR/leaderboard_runs.json
set -u
O=${1:?usage: scripts/device/lra_grid.sh OUT_DIR}
mkdir -p "$O"
O=$(cd "$O" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DRY=${DRY_RUN:-0}
DEADLINE=${LRA_SECONDS:-540}
# lra fit's Lightning CLI needs jsonargparse[signatures], which the GPU image lacks
. scripts/device/wheels.sh
[ "$DRY" != 1 ] && install_wheels
warn_without_lightning_cli
[ -n "${LRA_STORE:-}" ] && cp "$LRA_STORE" "$O/leaderboard_runs.json"
if [ "$DRY" = 1 ]; then
    ARGS=(--quick --mixers attention s4d --tasks listops --max-steps 2 --no-sweep --jobs 2
          --timeout 120)
else
    # one thread and no DataLoader workers per run: 16 runs share 16 cores (the data are
    # tensors cached by the first run, so no worker is needed to feed a batch)
    ARGS=(--setting "${LRA_SETTING:-listops-lra}" --jobs "${LRA_JOBS:-16}" --threads 1
          --budget-minutes "${LRA_BUDGET:-6}" --timeout "$((DEADLINE - 40))"
          --set data.init_args.num_workers=0)
fi
# shellcheck disable=SC2206  # LRA_ARGS is a list of options, split on purpose
ARGS+=(${LRA_ARGS:-})
echo "== LRA grid: ${ARGS[*]} (deadline ${DEADLINE} s)" | tee "$O/lra.log"
timeout --signal=INT "$((DEADLINE - 20))" python3 -m lra.leaderboard "${ARGS[@]}" \
    --out "$O/leaderboard.md" --runs-dir /tmp/lra_grid_runs --plot none >> "$O/lra.log" 2>&1
echo "== exit $? after ${SECONDS} s" | tee -a "$O/lra.log"
python3 - "$O/leaderboard_runs.json" <<'PY' | tee -a "$O/lra.log"
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
ok = [r for r in runs if r.get("status") == "ok"]
print(f"{len(runs)} records, {len(ok)} ok; steps {sorted(r.get('steps') or 0 for r in ok)}")
for r in ok:
    print(f"  {r['mixer']} {r['task']} lr {r['lr']} seed {r.get('seed')}: test {r['test']:.3f} "
          f"after {r.get('steps')} steps in {r.get('fit_s')} s")
PY
