#!/usr/bin/env bash
# Build the two CUDA extensions that PyPI ships only as source (causal-conv1d's
# causal_conv1d_cuda and mamba-ssm's selective_scan_cuda) HERE, on a machine with nvcc and no
# GPU, for Hopper (sm_90) alone, against the GPU machine's PyTorch, so that a GPU call spends
# no minute compiling. The GPU image's torch is 2.11.0+cu130 with Python 3.12; the PyPI wheel
# torch==2.11.0 is that same build, so its headers and libraries are the ones to compile and
# link against (nothing of it is imported here: its CUDA libraries are not installed).
#
#   bash scripts/device/prepare.sh       # first: unpacks the sdists into .kern and /tmp
#   bash scripts/device/build_here.sh    # then: .kern/cc_build and .kern/ss_build,
#                                        # each extension as NAME.so.xz
#
# Environment: TORCH_VERSION (2.11.0), PY312 (a python3.12 whose headers are used), JOBS (2),
# NICE (0; raise it to leave other work the CPU),
# WHAT ("cc ss": which extensions). Each object is compiled once (kept in /tmp/lrm-ext-obj),
# so a cut-off build resumes. scripts/device/sweep.sh puts both folders on PYTHONPATH.
set -eu
cd "$(git rev-parse --show-toplevel)"
TV=${TORCH_VERSION:-2.11.0}
JOBS=${JOBS:-2}
NICE=${NICE:-0}
WHAT=${WHAT:-cc ss}
if [ -z "${PY312:-}" ]; then  # the first python3.12 that runs (a pyenv shim may not)
    for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        "$c" -c pass 2>/dev/null && { PY312=$c; break; }
    done
fi
"${PY312:-false}" -c pass 2>/dev/null || { echo "need a python3.12 for its headers: set PY312" >&2; exit 1; }
PYINC=$("$PY312" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
CC_SRC=.kern/causal_conv1d-1.7.0
SS_SRC=/tmp/lrm-sdists/mamba_ssm-2.3.2.post1
[ -d "$CC_SRC" ] && [ -d "$SS_SRC" ] || { echo "run scripts/device/prepare.sh first" >&2; exit 1; }
T=/tmp/lrm-torch-$TV
if [ ! -d "$T/torch/lib" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d /tmp/lrm-torch-whl "torch==$TV"
    mkdir -p "$T" && unzip -q -o /tmp/lrm-torch-whl/torch-"$TV"-*.whl 'torch/include/*' \
        'torch/lib/*' 'torch/version.py' -d "$T"
fi
grep -E "^(__version__|cuda)" "$T/torch/version.py"
CUDA=${CUDA_HOME:-$(ls -d /usr/local/cuda /usr/local/cuda-1* 2>/dev/null | head -n 1)}
[ -f "$CUDA/include/cuda_runtime_api.h" ] || { echo "no CUDA toolkit found: set CUDA_HOME" >&2; exit 1; }
INC=(-isystem "$T/torch/include" -isystem "$T/torch/include/torch/csrc/api/include"
     -isystem "$CUDA/include" -isystem "$PYINC")
NVFLAGS=(-O3 -std=c++17 --compiler-options -fPIC -gencode arch=compute_90,code=sm_90
         -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
         -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__
         -U__CUDA_NO_BFLOAT162_OPERATORS__ -U__CUDA_NO_BFLOAT162_CONVERSIONS__
         --expt-relaxed-constexpr --expt-extended-lambda --use_fast_math)
export T CUDA
build() {  # build NAME OUT_DIR SOURCE...
    local name=$1 out=$2; shift 2
    local obj=/tmp/lrm-ext-obj/$name defs=(-DTORCH_EXTENSION_NAME="$name" -DTORCH_API_INCLUDE_EXTENSION_H)
    mkdir -p "$obj" "$out"
    local start=$SECONDS objs=()
    for src in "$@"; do objs+=("$obj/$(basename "$src").o"); done
    # one compiler per source, JOBS at a time, each skipped when its object exists
    printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c '
        src={}; o='"$obj"'/$(basename "$src").o
        [ -s "$o" ] && exit 0
        case $src in
          *.cu) nice -n '"$NICE"' nvcc -ccbin g++ '"${defs[*]} ${INC[*]} ${NVFLAGS[*]}"' -I$(dirname "$src") -c "$src" -o "$o.tmp" ;;
          *)    nice -n '"$NICE"' g++ -O3 -std=c++17 -fPIC '"${defs[*]} ${INC[*]}"' -I$(dirname "$src") -c "$src" -o "$o.tmp" ;;
        esac && mv "$o.tmp" "$o" && echo "  compiled $(basename "$src")"'
    g++ -shared "${objs[@]}" -L"$T/torch/lib" -lc10 -lc10_cuda -ltorch_cpu -ltorch_cuda -ltorch \
        -ltorch_python -L"$CUDA/lib64" -L"$CUDA/lib" -lcudart -o "$out/$name.so"
    strip --strip-unneeded "$out/$name.so"
    # what travels is compressed (55 MB of selective scan become 6): sweep.sh unpacks it there
    xz -9 -T0 -f "$out/$name.so"
    echo "$name: $(du -h "$out/$name.so.xz" | cut -f1) compressed, in $((SECONDS - start)) s"
}
if [[ " $WHAT " == *" cc "* ]]; then
    build causal_conv1d_cuda .kern/cc_build "$CC_SRC"/csrc/causal_conv1d.cpp \
        "$CC_SRC"/csrc/causal_conv1d_fwd.cu "$CC_SRC"/csrc/causal_conv1d_bwd.cu \
        "$CC_SRC"/csrc/causal_conv1d_update.cu
fi
if [[ " $WHAT " == *" ss "* ]]; then
    build selective_scan_cuda .kern/ss_build "$SS_SRC"/csrc/selective_scan/selective_scan.cpp \
        "$SS_SRC"/csrc/selective_scan/selective_scan_*.cu
fi
du -sh .kern
