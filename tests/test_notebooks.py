"""The notebooks are committed executed, so that they read well on a code host.

CI re-executes them (``pytest --nbmake notebooks``); this file checks what is committed: every
code cell ran, in order, without an error; every cell that shows a figure holds it as a small
PNG. Re-execute a notebook after editing it:

    jupyter nbconvert --to notebook --execute --inplace notebooks/<name>.ipynb
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
MAX_PNG_BYTES = 120_000


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_with_its_outputs(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in cells]
    assert None not in counts, f"{path.name}: cells without outputs; re-execute it (see above)"
    assert counts == sorted(counts), f"{path.name}: cells ran out of order"
    assert any(c["outputs"] for c in cells), f"{path.name} has no outputs"
    for i, cell in enumerate(cells):
        assert not any(o["output_type"] == "error" for o in cell["outputs"]), \
            f"{path.name}, code cell {i}: committed with an error"
        pngs = [o["data"]["image/png"] for o in cell["outputs"]
                if "image/png" in o.get("data", {})]
        if "plt.show()" in "".join(cell["source"]):
            assert pngs, f"{path.name}, code cell {i}: shows a figure but holds no PNG"
        for png in pngs:
            size = len(base64.b64decode(png))
            assert size < MAX_PNG_BYTES, f"{path.name}, code cell {i}: a {size}-byte PNG"
