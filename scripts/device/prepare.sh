#!/usr/bin/env bash
# Lay out, in the repository root, what scripts/device/sweep.sh carries to the GPU machine
# (which has no network, and whose image already holds torch, Triton 3.6, Lightning, einops).
# Run here, on a machine that reaches PyPI:
#
#   bash scripts/device/prepare.sh
#
#   .whl/  the wheels the GPU image lacks: fla-core, and jsonargparse with its [signatures]
#          extra's needs (Lightning's CLI, for s4_listops.sh). Not tilelang: with it installed fla would
#          run its gated-delta-rule backward on Hopper under Triton < 3.7.1, but it does not
#          import without z3's library (seen on 2026-12-04), and tilelang (50 MB) and z3-solver
#          (29 MB) do not fit together in what a call carries (64 MiB); nor does a Triton 3.7.1
#          wheel (198 MB). That backward stays blocked there; kernel_bench times its forward.
#   .kern/ mamba-ssm's Python package and causal-conv1d's source, from their PyPI sdists (PyPI
#          has no wheels for either), plus sitecustomize.py and build_causal_conv1d.py.
#          scripts/device/build_here.sh then compiles both extensions into .kern for sm_90.
# Both folders are ignored by git (.git/info/exclude); nothing of the third-party code is
# committed. What travels (the tracked files plus these) must stay under 64 MiB.
set -eu
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.kern/\n' >> .git/info/exclude
PLAT="--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
for n in 24 27 28; do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLAT -d .whl fla-core==0.6.0
# Lightning's CLI (lra fit, so every LRA run) needs jsonargparse[signatures], which the GPU
# image lacks (s4_listops.sh stopped on it on 2026-12-04): the package and its extra's needs
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLAT -d .whl jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
    importlib-resources==7.1.0
mkdir -p .kern/mamba /tmp/lrm-sdists
# the sdists' setup.py wants torch at metadata time: reuse the installed one, build nothing
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE python3 -m pip download -q \
    --no-deps --no-build-isolation --no-binary=:all: -d /tmp/lrm-sdists \
    mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
tar -xzf /tmp/lrm-sdists/mamba_ssm-2.3.2.post1.tar.gz -C /tmp/lrm-sdists
tar -xzf /tmp/lrm-sdists/causal_conv1d-1.7.0.tar.gz -C .kern
rm -rf .kern/mamba/mamba_ssm && cp -r /tmp/lrm-sdists/mamba_ssm-2.3.2.post1/mamba_ssm .kern/mamba/
cp scripts/device/sitecustomize.py .kern/sitecustomize.py
cp scripts/device/build_causal_conv1d.py .kern/build_cc.py
du -sh .whl .kern
total=$(( $(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1) \
          + $(du -sb .whl | cut -f1) + $(du -sb .kern | cut -f1) ))
echo "what travels to the GPU machine: $((total / 1048576)) MiB of at most 64"
[ "$total" -lt $((64 * 1048576)) ] || { echo "over 64 MiB: carry less" >&2; exit 1; }
