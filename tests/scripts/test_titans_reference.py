"""scripts/titans_reference.py: titans-pytorch's MAC transformer sized as lrm's MAC model at the
same width, trainable by lra's loop (no parameter the optimiser cannot update in place), run on
the arena's cell, and a stored run read back rather than trained again."""

from __future__ import annotations

import pytest
import torch
from _helpers import load_script

import lrm
from lra.leaderboard.store import load_store

pytest.importorskip("titans_pytorch")


@pytest.mark.parametrize("d", [32, 64, 128])
def test_reference_is_sized_as_lrms_mac(d):
    ref = load_script("titans_reference").reference_config(d)
    mac = lrm.build("titans", d).mixer
    mem = mac.memory  # lrm's long-term memory: H heads of width K
    assert (ref["segment_len"], ref["num_persist_mem_tokens"]) == (mac.segment_len,
                                                                  mac.n_persistent)
    assert ref["heads"] == mac.attn_heads and ref["heads"] * ref["dim_head"] == d
    assert (ref["neural_memory_kwargs"]["heads"],
            ref["neural_memory_kwargs"]["dim_head"]) == (mem.n_heads, mem.head_dim)
    assert ref["depth"] == 2 and ref["neural_memory_layers"] == (1, 2)


def test_every_reference_parameter_is_updated_by_adamw():
    """The reference expands one set of initial memory weights over its heads (stride 0); the
    script gives each head its own copy, so AdamW with weight decay can step every parameter."""
    tr = load_script("titans_reference")
    model = tr.build_reference(40, tr.reference_config(32))
    assert all(0 not in p.stride() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randint(0, 40, (2, 70))).square().mean().backward()
    opt.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert sum(moved) == len(moved) - sum(p.grad is None for p in model.parameters())


def test_a_run_is_stored_and_then_read_back(tmp_path, monkeypatch, capsys):
    tr = load_script("titans_reference")
    store = tmp_path / "runs.json"
    monkeypatch.setattr(tr.arena, "CHECKPOINTS", tmp_path / "ckpt")
    monkeypatch.delenv("LRA_RECALL_CHECKPOINTS", raising=False)
    argv = ["--cell", "64:4:32", "--steps", "2", "--lr", "1e-3", "--store", str(store)]
    tr.main(argv)
    (rec,) = load_store(store)
    assert (rec["L"], rec["kv"], rec["d"], rec["steps"], rec["lr"]) == (64, 4, 32, 2, 1e-3)
    assert rec["n_train"] == 64 and rec["batch"] == 32 and 0.0 <= rec["acc"] <= 1.0
    assert len(rec["acc_by_position"]) == 4 and rec["config"]["dim"] == 32
    monkeypatch.setattr(tr, "train", lambda *a, **k: pytest.fail("trained a stored run"))
    tr.main(argv)
    assert "(from the store)" in capsys.readouterr().out
    # another rate is another run
    with pytest.raises(pytest.fail.Exception):
        tr.main([*argv[:-4], "--lr", "3e-3", "--store", str(store)])
