#!/usr/bin/env bash
# Lay out, in the repository root, what scripts/device/session*.sh carry to the GPU machine
# (which has no network). Run here, on a machine that reaches PyPI:
#
#   bash scripts/device/prepare.sh [PATHFINDER_DATA_ROOT]
#
#   .whl/  wheels the GPU image lacks (pure Python): fla-core, jsonargparse and the two packages
#          LightningCLI needs with it
#   .kern/ mamba-ssm's Python package and causal-conv1d's source, from their PyPI sdists (PyPI
#          has no wheels for either), plus sitecustomize.py and build_causal_conv1d.py
#   .kern/pf.tgz  a generated Pathfinder-32 set, when a data root is given
# Both folders are ignored by git (.git/info/exclude); nothing of the third-party code is
# committed.
set -eu
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.kern/\n' >> .git/info/exclude
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLAT -d .whl fla-core==0.6.0 jsonargparse==4.53.0 docstring-parser==0.18.0 \
    typeshed-client==2.15.0
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
if [ "${1:-}" ]; then tar -czf .kern/pf.tgz -C "$1" pathfinder32; fi
du -sh .whl .kern
