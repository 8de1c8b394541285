#!/usr/bin/env bash
# The GPU sweep: everything lrm checks on a CUDA GPU, in one call of under 9 minutes on a fresh
# machine with no network. Run it whenever a GPU is at hand; record what ran in docs/kernels.md.
#
#   bash scripts/device/prepare.sh          # here, with PyPI: lays out .whl/ and .kern/
#   bash scripts/device/sweep.sh OUT_DIR    # there, in the repository root, carrying .whl .kern
#   DRY_RUN=1 bash scripts/device/sweep.sh OUT_DIR    # on a CPU: every step that can run there
#
#   SWEEP_OPS="gdn2 selective_scan" bash scripts/device/sweep.sh OUT_DIR   # those ops alone
#
# Steps (each with its own timeout, all inside one deadline, SWEEP_SECONDS, default 530 s):
#   1. install the carried wheels (fla-core) into /tmp/site. A carried tilelang that does not
#      import is removed again: fla imports it when present, and a broken one (it needs z3's
#      library) stops every fla op from importing, as it did on 2026-12-04;
#   2. the compiled extensions: causal_conv1d_cuda and selective_scan_cuda prebuilt by
#      scripts/device/build_here.sh (.kern/cc_build, .kern/ss_build, xz-compressed); without a prebuilt
#      causal-conv1d, a JIT build for sm_90 alone in the background while step 4 runs
#      (300 s and 12 jobs were not enough for it on 2026-12-04);
#   3. env.json: device, versions, which kernels import and why not, fla's backward guard;
#   4. scripts/kernel_bench.py, one op per process, each with a timeout: parity against the
#      reference (output and every input gradient) and fwd+bwd time and peak memory at
#      T = 1024, 4096, 16384. Each row is appended to kernel_bench.jsonl as it is measured;
#   5. the CUDA tests (pytest -m cuda): every mixer on its kernels against its reference;
#   6. scripts/device/profile_step.py: S4's ListOps recipe step timed by phase and profiled
#      (profile_step.json, profile_step.txt), up to 60 s;
#   7. a bf16 throughput row for every mixer (scripts/bench.py, backend auto, d 512, batch 8,
#      L 4096), one mixer per process, appended to throughput.jsonl, while time is left.
# Everything lands in OUT_DIR as it is produced, in eight files.
set -u
O=${1:?usage: scripts/device/sweep.sh OUT_DIR}
mkdir -p "$O"
O=$(cd "$O" && pwd)
cd "$(dirname "$0")/../.."
DRY=${DRY_RUN:-0}
DEADLINE=${SWEEP_SECONDS:-530}
LOG="$O/sweep.log"
KB="$O/kernel_bench.jsonl"
TP="$O/throughput.jsonl"
: > "$LOG"
: > "$KB"
: > "$TP"
say() { echo "== [${SECONDS} s] $*" | tee -a "$LOG"; }
# the seconds a step may take: its own cap, and never past the deadline (minus 10 s to write up)
left() { local r=$((DEADLINE - SECONDS - 10)); [ "$r" -lt "$1" ] && echo "$r" || echo "$1"; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# Triton keeps compiled kernels on disk anyway; this keeps the autotuners' choices too, so
# that the CUDA tests (step 5) reuse what the kernel bench (step 4) tuned
export TRITON_CACHE_AUTOTUNING=1

say "1. wheels"
if [ "$DRY" = 1 ]; then
    say "dry run: not installing; carried: $(ls .whl 2>/dev/null | tr '\n' ' ')"
elif ls .whl/*.whl > /dev/null 2>&1; then
    . scripts/device/wheels.sh
    install_wheels >> "$LOG" 2>&1 || say "pip install failed (see above)"
    if [ -d /tmp/site/tilelang ] && ! python3 -c "import tilelang" >> "$LOG" 2>&1; then
        rm -rf /tmp/site/tilelang /tmp/site/tilelang-*
        say "tilelang does not import (above): removed, so that fla imports without it"
    fi
else
    say "no .whl/ carried: fla and tilelang come only from the image, if at all"
fi

# mamba-ssm's Triton kernels from its unpacked sdist (.kern/sitecustomize.py registers the
# package without the __init__ that imports its compiled extension)
[ -d .kern/mamba ] && export PYTHONPATH=$PWD/.kern:$PYTHONPATH MAMBA_TRITON_SRC=$PWD/.kern/mamba
# causal-conv1d's Python package (it imports the compiled causal_conv1d_cuda)
[ -d .kern/causal_conv1d-1.7.0 ] && export PYTHONPATH=$PWD/.kern/causal_conv1d-1.7.0:$PYTHONPATH

say "2. compiled extensions"
# build_here.sh leaves them xz-compressed (what a call carries is limited); Python unpacks them
# (the image need not have xz) into /tmp, so that the carried folder stays as it came
EXT=/tmp/lrm-ext
for f in .kern/*_build/*.so.xz; do
    [ -e "$f" ] || continue
    d=$EXT/$(basename "$(dirname "$f")")
    mkdir -p "$d"
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        "$f" "$d/$(basename "$f" .xz)" && say "unpacked $f"
done
if ls $EXT/ss_build/selective_scan_cuda*.so > /dev/null 2>&1; then
    export PYTHONPATH=$EXT/ss_build:$PYTHONPATH
    say "prebuilt: $(ls $EXT/ss_build/selective_scan_cuda*.so)"
fi
BUILD_PID=
if ls $EXT/cc_build/causal_conv1d_cuda*.so > /dev/null 2>&1; then
    export PYTHONPATH=$EXT/cc_build:$PYTHONPATH
    say "prebuilt: $(ls $EXT/cc_build/causal_conv1d_cuda*.so)"
elif [ "$DRY" = 1 ]; then
    say "dry run: no build (it needs a CUDA build of torch)"
elif [ -f .kern/build_cc.py ]; then
    MAX_JOBS=12 timeout "$(left 300)" python3 .kern/build_cc.py /tmp/cc_build > "$O/build.log" 2>&1 &
    BUILD_PID=$!
    export PYTHONPATH=/tmp/cc_build:$PYTHONPATH
    say "building in the background (pid $BUILD_PID), log in build.log"
else
    say "no .kern/ carried: causal_conv1d runs on the reference only"
fi

say "3. environment"
timeout "$(left 60)" python3 - > "$O/env.json" 2>> "$LOG" <<'EOF'
import json, importlib, platform
import torch
from lrm.ops import _kernels
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
for pkg in ("triton", "fla", "tilelang", "mamba_ssm", "causal_conv1d_cuda"):
    try:
        info[pkg] = getattr(importlib.import_module(pkg), "__version__", "imported")
    except Exception as err:  # noqa: BLE001 - report, never stop
        info[pkg] = f"missing: {type(err).__name__}: {str(err)[:200]}"
kernels = ("chunk_gated_delta_rule", "chunk_gdn2", "parallel_forgetting_attn",
           "mamba_chunk_scan_combined", "selective_scan_fn", "causal_conv1d_fn")
info["kernels"] = {k: "ok" if _kernels.get(k) is not None else _kernels._IMPORT_ERRORS.get(k, "?")
                   for k in kernels}
info["fla_gated_bwd_blocked"] = (_kernels.fla_gated_bwd_blocked()
                                 if torch.cuda.is_available() else "no GPU")
print(json.dumps(info, indent=1))
EOF
cat "$O/env.json" >> "$LOG"

say "4. kernel parity and speed, one op per process"
BENCH=(python3 scripts/kernel_bench.py --jsonl "$KB")
[ "$DRY" = 1 ] && BENCH+=(--dry-run)
# ssd gets the most: mamba-ssm's Triton SSD compiled and autotuned for over 70 s at T = 1024
# on 2026-12-04 and wrote no row
# on 2026-12-04 (third run) gated_delta_rule and forgetting_attn took 66 s each, ssd 110;
# gdn2 wrote no row in 70 s (its first call compiles and autotunes fla's kernels)
OPS=(selective_scan:60 gated_delta_rule:90 gdn2:150 forgetting_attn:90 ssd:130)
# a prebuilt causal-conv1d goes first; one still building in the background goes last
if [ -n "$BUILD_PID" ]; then OPS+=(causal_conv1d:40); else OPS=(causal_conv1d:40 "${OPS[@]}"); fi
for spec in "${OPS[@]}"; do
    op=${spec%%:*}
    # SWEEP_OPS="gdn2 selective_scan" measures those alone (the others were measured before)
    if [ -n "${SWEEP_OPS:-}" ] && [[ " $SWEEP_OPS " != *" $op "* ]]; then continue; fi
    if [ "$op" = causal_conv1d ] && [ -n "$BUILD_PID" ]; then
        say "waiting for the causal-conv1d build"
        wait "$BUILD_PID"; say "build exit $? ($(tail -n 1 "$O/build.log"))"
    fi
    t=$(left "${spec##*:}")
    [ "$t" -lt 5 ] && { say "$op: no time left"; echo "{\"op\": \"$op\", \"skipped\": \"no time left\"}" >> "$KB"; continue; }
    say "$op (timeout ${t} s)"
    timeout "$t" "${BENCH[@]}" --ops "$op" >> "$LOG" 2>&1
    rc=$?
    [ $rc -ne 0 ] && { say "$op: exit $rc"; echo "{\"op\": \"$op\", \"exit\": $rc}" >> "$KB"; }
done

say "5. CUDA tests"
t=$(left 150)
if [ "$t" -ge 20 ]; then
    # -v names each test as it starts, so a cut-off log still says which one was running
    timeout "$t" python3 -m pytest -m cuda tests -v -rA --durations=0 -p no:cacheprovider \
        > "$O/pytest_cuda.log" 2>&1
    say "pytest exit $? ($(tail -n 1 "$O/pytest_cuda.log"))"
else
    say "no time left for the CUDA tests"
fi

say "6. where a training step of S4's ListOps recipe spends its time"
t=$(left 60)
if [ "$t" -ge 20 ]; then
    PROF=(python3 scripts/device/profile_step.py "$O")
    [ "$DRY" = 1 ] && PROF+=(--dry-run)
    timeout "$t" "${PROF[@]}" >> "$LOG" 2>&1
    say "profile_step exit $?"
else
    say "no time left for profile_step"
fi

say "7. bf16 throughput, one mixer per process"
if [ "$DRY" = 1 ]; then SIZE=(--device cpu --lengths 128 --d 64 --batch 2 --repeats 1)
else SIZE=(--device cuda --lengths 4096 --d 512 --batch 8 --repeats 5); fi
for m in $(python3 -c "import lrm; print(' '.join(lrm.available()))"); do
    t=$(left 40)
    [ "$t" -lt 10 ] && { say "$m: no time left"; echo "{\"mixer\": \"$m\", \"skipped\": \"no time left\"}" >> "$TP"; continue; }
    timeout "$t" python3 scripts/bench.py --mixers "$m" --dtype bf16 --backends auto "${SIZE[@]}" \
        --timeout $((t - 5)) --out "/tmp/tp_$m" >> "$LOG" 2>&1
    rc=$?
    if [ -s "/tmp/tp_$m/scaling.json" ]; then
        python3 -c "import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))['results']]" \
            "/tmp/tp_$m/scaling.json" >> "$TP"
    else
        echo "{\"mixer\": \"$m\", \"exit\": $rc}" >> "$TP"
    fi
    say "$m: exit $rc"
done

say "done"
