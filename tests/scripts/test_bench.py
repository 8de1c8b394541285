"""scripts/bench.py and scripts/measure.py: the train-step dry run, the output rules (tracked
docs only with --publish) and the marked-section writer."""

from __future__ import annotations

import json
import re

import pytest
from _helpers import load_script


def _table(md: str) -> list[dict[str, str]]:
    rows = [line.strip("|").split("|") for line in md.splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0]]
    return [dict(zip(head, (c.strip() for c in r), strict=True)) for r in rows[2:]]


def test_train_step_dry_run_reports_ratios_to_attention(tmp_path):
    bench = load_script("bench")
    bench.main(["train-step", "--dry-run", "--mixers", "gdn", "attention", "--out",
                str(tmp_path)])
    rows = _table((tmp_path / "train-step.md").read_text())
    assert [r["mixer"] for r in rows] == ["attention", "gdn"]
    by = {r["mixer"]: r for r in rows}
    assert by["attention"]["ratio to attention"] == "1.00"
    assert float(by["gdn"]["ratio to attention"]) > 0
    saved = json.loads((tmp_path / "train-step.json").read_text())
    assert saved["provenance"]["threads"] == 1 and saved["provenance"]["torch"]
    assert "train-step --dry-run" in saved["provenance"]["command"]
    gdn = next(r for r in saved["results"] if r["mixer"] == "gdn")
    assert gdn["n"] == 1 and gdn["ratio"] == pytest.approx(
        gdn["median_s"] / saved["results"][0]["median_s"])


def test_docs_are_written_only_with_publish(tmp_path):
    measure = load_script("measure")
    with pytest.raises(SystemExit, match="--publish"):
        measure.run_dir("scaling", measure.DOCS / "bench")
    assert measure.run_dir("scaling", tmp_path / "run") == tmp_path / "run"


def test_summarize_median_and_spread():
    measure = load_script("measure")
    s = measure.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median_s"], s["min_s"], s["max_s"], s["q1_s"], s["q3_s"]) == (3, 1, 5, 2, 4)
    assert measure.summarize([2.0])["q1_s"] == 2.0


def test_write_section_replaces_only_its_own_section(tmp_path):
    measure = load_script("measure")
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nhand-written notes\n")
    measure.write_section(doc, "bench-x", "first table")
    measure.write_section(doc, "bench-y", "other table")
    measure.write_section(doc, "bench-x", "second table")
    text = doc.read_text()
    assert text.startswith("# Title\n\nhand-written notes\n")
    assert "second table" in text and "first table" not in text and "other table" in text
    assert text.count("<!-- bench-x:begin -->") == 1
    assert text.index("second table") < text.index("other table")


def test_every_option_has_help_and_shows_its_default():
    bench = load_script("bench")
    parser = bench.build_parser()
    for mode, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{mode} {action.option_strings} has no help text"
        assert "(default:" in sub.format_help(), mode


def test_titans_parts_are_taken_out_only_inside_forced_path():
    """titans:no-memory swaps the memory op for a stand-in while the case runs and puts it back:
    the block's output changes inside and is the original again after."""
    import torch

    import lrm
    import lrm.mixers.titans as titans

    bench = load_script("bench")
    torch.manual_seed(0)
    block = lrm.build("titans", d=16)
    x = torch.randn(2, 32, 16)
    before = block(x)[0]
    op = titans.neural_memory
    with bench.forced_path("titans", "no-memory"):
        assert titans.neural_memory is not op
        inside = block(x)[0]
    with bench.forced_path("titans", "no-memory-read"):
        without_read = block(x)[0]
    assert titans.neural_memory is op
    assert not torch.allclose(inside, before, atol=1e-4)
    assert not torch.allclose(without_read, inside, atol=1e-4)
    assert torch.equal(block(x)[0], before)
    with pytest.raises(SystemExit, match="no CPU path 'no-memory' for 'mamba'"):
        bench.split_path("mamba:no-memory")


def test_train_step_compile_compiles_every_model_and_times_its_first_step(tmp_path,
                                                                          monkeypatch):
    # Inductor itself is not run here (minutes per model); what is tested is the plumbing:
    # every model is compiled before its first step, which is reported apart from the ratios
    import torch

    bench = load_script("bench")
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: compiled.append(type(self).__name__))
    bench.main(["train-step", "--dry-run", "--interleaved", "--compile", "--mixers", "gdn",
                "--out", str(tmp_path)])
    assert compiled == ["LRModel", "LRModel"]  # attention, then gdn
    md = (tmp_path / "train-step.md").read_text()
    assert "compiled" in md.splitlines()[0]
    assert re.search(r"timed on its own: d 16 L 32: attention \d+ s, gdn \d+ s", md)
    row = json.loads((tmp_path / "train-step.json").read_text())["results"][0]
    assert set(row["first_step_s"]) == {"attention", "gdn"}
    assert all(s > 0 for s in row["first_step_s"].values())
    with pytest.raises(SystemExit, match="--interleaved"):
        bench.main(["train-step", "--dry-run", "--compile", "--out", str(tmp_path / "b")])


def test_dispatched_ops_counts_each_op_and_the_backward_too():
    """The count is exact for plain ops, and a backward adds its own ops (a count taken above
    autograd would miss them)."""
    import torch

    bench = load_script("bench")
    a = torch.ones(3, requires_grad=True)
    assert bench.dispatched_ops(lambda: a.detach() * 2 + 1) == 3  # detach, mul, add
    forward = bench.dispatched_ops(lambda: (a * 2).sum())
    both = bench.dispatched_ops(lambda: (a * 2).sum().backward())
    assert forward == 2 and both > forward


def test_train_step_interleaved_count_ops_adds_a_table(tmp_path):
    bench = load_script("bench")
    bench.main(["train-step", "--dry-run", "--interleaved", "--count-ops", "--mixers", "gdn",
                "--out", str(tmp_path)])
    md = (tmp_path / "train-step.md").read_text()
    ops = _table(md[md.index("ATen ops dispatched"):].split("\n", 2)[2])
    assert len(ops) == 1 and ops[0]["d"] == "16"
    # a GDN step does more than an attention step of the same model
    assert int(ops[0]["`gdn`"].replace(",", "")) > int(ops[0]["`attention`"].replace(",", "")) > 100
    with pytest.raises(SystemExit, match="--interleaved"):
        bench.main(["train-step", "--dry-run", "--count-ops", "--mixers", "gdn"])


def test_ops_scan_times_every_algorithm_at_the_state_size_asked(tmp_path, monkeypatch):
    """`ops --ops scan` times the dispatch, the small and the lean scan in one table, at the
    N of --d-state (which reaches the op: the inputs' B has N rows)."""
    bench = load_script("bench")
    from lrm.ops import selective_scan as SS

    seen = []
    small = SS.selective_scan_small

    def spy(u, delta, A, B, *a, **k):
        seen.append(A.shape[-1])
        return small(u, delta, A, B, *a, **k)

    monkeypatch.setattr(SS, "selective_scan_small", spy)
    bench.main(["ops", "--ops", "scan", "--d", "4", "--lengths", "8", "--batch", "2",
                "--d-state", "6", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    md = next(tmp_path.glob("*.md")).read_text()
    assert "the scan's N 6" in md
    (row,) = _table(md)
    assert row["d"] == "4" and row["L"] == "8"
    assert float(row["`small` ×"]) > 0 and float(row["`lean` ×"]) > 0
    assert seen and set(seen) == {6}
