"""scripts/pathfinder_control.py: the CNN control of the CPU Pathfinder probes reads the
setting's data through the real loader and learns a label that is visible in the image."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import load_script

from lra.data.pathfinder_generator import generate_pathfinder

pc = load_script("pathfinder_control")


def test_the_cnn_learns_a_visible_label_and_keeps_images_with_their_labels():
    """Label 1 = a bright 3x3 patch in the top-left corner. A train() that shuffled images and
    labels apart, a head that ignored the features, or a test accuracy taken from the wrong
    checkpoint would stay near 50%."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 1, 32, 32, generator=g) * 0.3
        y = torch.randint(0, 2, (n,), generator=g)
        x[y == 1, :, 2:5, 2:5] = 1.0
        return x, y

    splits = {"train": split(512), "val": split(128), "test": split(128)}
    out = pc.train(splits, steps=120, batch=32, lr=3e-3, width=8, eval_every=40, seed=0,
                   progress=False)
    assert [r["step"] for r in out["curve"]] == [40, 80, 120]
    assert out["test_acc"] > 0.95, out
    assert out["best_val_acc"] == max(r["val_acc"] for r in out["curve"])
    assert 0.5 <= out["test_majority"] <= 0.65


def test_the_cnn_reads_the_setting_data_through_the_loader(tmp_path, capsys):
    generate_pathfinder(tmp_path, size=32, contour_length=6, n_images=40, per_batch=20,
                        distractors=0, progress=False)
    result = pc.main(["--setting", "pathfinder-easy", "--data-dir", str(tmp_path), "--steps",
                      "4", "--batch", "8", "--eval-every", "2", "--json",
                      str(tmp_path / "r.json")])
    assert "curv_baseline_distractors0, 32/4/4" in result["data"]
    assert len(result["curve"]) == 2
    assert json.loads((tmp_path / "r.json").read_text())["test_acc"] == result["test_acc"]
    assert "CNN (" in capsys.readouterr().out
    # the pixels arrive scaled to [0, 1] as images, not 1,024 raw tokens
    splits, _ = pc.load_splits("pathfinder-easy", str(tmp_path))
    images, labels = splits["train"]
    assert images.shape == (32, 1, 32, 32) and labels.shape == (32,)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0 and float(images.max()) > 0.5


def test_a_setting_without_pathfinder_or_data_gets_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="must be a leaderboard setting with Pathfinder"):
        pc.main(["--setting", "listops-lra"])
    with pytest.raises(SystemExit, match="lra generate pathfinder --out"):
        pc.main(["--setting", "pathfinder-easy", "--data-dir", str(tmp_path / "none")])
