# Sourced by the GPU scripts (sweep.sh, s4_listops.sh, lra_grid.sh), never run on its own: the
# wheels scripts/device/prepare.sh lays out in .whl/ (fla-core; jsonargparse with its
# [signatures] extra, which lra fit's Lightning CLI needs and the GPU image lacks) go into
# /tmp/site, offline, and onto PYTHONPATH.

# install_wheels: 0 when pip installed them; 1 when none are carried; pip's status otherwise.
# /tmp/site goes onto PYTHONPATH whenever pip ran, as far as it got.
install_wheels() {
    ls .whl/*.whl > /dev/null 2>&1 || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    local rc=$?
    export PYTHONPATH=/tmp/site:$PYTHONPATH
    return $rc
}

# warn_without_lightning_cli: say so up front when lra fit would stop at its first import
warn_without_lightning_cli() {
    python3 -c "import jsonargparse, docstring_parser, typeshed_client" 2>/dev/null ||
        echo "== jsonargparse[signatures] does not import: lra fit will stop (carry .whl)"
}
