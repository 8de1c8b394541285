"""The GPU scripts run on a CPU as far as they can, so that GPU time is never spent debugging
them: `scripts/kernel_bench.py --dry-run` and the shell syntax of `scripts/device/*.sh`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_bench_dry_run_appends_one_json_line_per_row(tmp_path):
    kb = load_script("kernel_bench")
    out = tmp_path / "rows.jsonl"
    out.write_text('{"op": "earlier process"}\n')  # appended to, never overwritten
    kb.main(["--dry-run", "--ops", "forgetting_attn", "causal_conv1d", "--jsonl", str(out),
             "--reps", "1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"op": "earlier process"}
    assert [r["op"] for r in rows[1:]] == ["forgetting_attn", "causal_conv1d"]
    for r in rows[1:]:
        assert r["dry_run"] and r["T"] == 64 and r["device"] == "cpu (dry run)"
        assert r["finite"] and r["out_rel_err"] == 0.0 and r["max_grad_rel_err"] == 0.0
        assert r["ref_ms"] > 0 and r["kernel_ms"] > 0


def test_a_slow_call_gets_fewer_repetitions_but_at_least_three(monkeypatch):
    """Mamba's reference scan at T = 16384 took seconds a call on a GPU, and ten repetitions of
    it outran the op's timeout: the timing budget caps the repetitions."""
    kb = load_script("kernel_bench")
    monkeypatch.setattr(kb, "DEVICE", "cpu")
    calls = []

    def slow():
        calls.append(1)
        kb.time.sleep(0.03)

    ms, reps = kb.median_ms(slow, reps=10, budget_s=0.1)
    assert reps == 3 and len(calls) == 2 + 3 and ms >= 30  # 2 untimed calls, 3 timed
    calls.clear()
    ms, reps = kb.median_ms(lambda: calls.append(1), reps=10, budget_s=5.0)
    assert reps == 10 and len(calls) == 12  # a fast call keeps every repetition asked for
    assert kb.median_ms(lambda: None, reps=2, budget_s=5.0)[1] == 2  # never more than asked


def test_a_blocked_backward_gives_a_forward_only_row(tmp_path, monkeypatch):
    kb = load_script("kernel_bench")
    reason = "fla refuses its gated backward here"
    monkeypatch.setattr(kb, "bwd_blocked", lambda op: reason if op == "gated_delta_rule" else None)

    def no_backward(*a, **k):
        raise AssertionError("the backward ran although it is blocked")

    monkeypatch.setattr(kb, "fwd_bwd", no_backward)
    out = tmp_path / "rows.jsonl"
    kb.main(["--dry-run", "--ops", "gated_delta_rule", "--jsonl", str(out), "--reps", "1"])
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["forward_only"] == reason and row["max_grad_rel_err"] is None
    assert row["out_rel_err"] == 0.0 and row["ref_ms"] > 0 and row["kernel_ms"] > 0


def test_kernel_bench_refuses_unknown_ops_and_a_missing_gpu():
    kb = load_script("kernel_bench")
    with pytest.raises(SystemExit, match="unknown op"):
        kb.main(["--dry-run", "--ops", "no_such_op"])
    if not kb.torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--dry-run"):
            kb.main(["--ops", "ssd"])


@pytest.mark.parametrize("script", sorted((ROOT / "scripts" / "device").glob("*.sh")),
                         ids=lambda p: p.name)
def test_device_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
