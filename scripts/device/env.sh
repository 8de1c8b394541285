# Sourced by scripts/device/session*.sh on the GPU machine: install the carried wheels (.whl/,
# made by prepare.sh) and point Python at them, at lrm and at the .kern/ hooks.
export PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.kern:/tmp/site:$PWD MAMBA_TRITON_SRC=$PWD/.kern/mamba
