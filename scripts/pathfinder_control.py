"""A positive control for the CPU Pathfinder probes: can a small convolutional network tell the
connected images from the others on the same generated data, where every sequence mixer of
``lra leaderboard --setting pathfinder-probe / pathfinder-easy`` stays at chance?

    python scripts/pathfinder_control.py --setting pathfinder-easy
    python scripts/pathfinder_control.py --setting pathfinder-easy --seed 1 --json runs/pf_cnn1.json

Why a CNN: Linsley et al. (2018, "Learning long-range spatial dependencies with horizontal gated
recurrent units") introduced Pathfinder and found that feed-forward CNNs with enough depth and
receptive field solve its short-contour versions; the task is local in the image plane
(follow a dashed line), and a convolution sees the image as a plane, where the sequence
mixers see 1,024 pixels in raster order. So a CNN that learns tells that the images carry
their label (the generator and the loader are right) and that the mixers' plateau at ln 2 is
theirs (their budget), not the data's; a CNN that stays at chance points at the data.

The data is the setting's (``lra.leaderboard.runner.SETTINGS``: folder, contour length,
distractors, the loader's 80/10/10 split), read through the same ``PathfinderDataModule``,
pixels scaled to [0, 1]. The network: three stages of two 3x3 convolutions (each followed by
BatchNorm, unless ``--no-norm``, and a ReLU) and a 2x2 max pool, widths ``--width``, 2·width,
2·width, then global max pooling and a linear classifier: the receptive field of the last
convolution spans 36 pixels, more than the 32x32 image. BatchNorm matters: without it the
same network can sit on the ln 2 plateau for thousands of steps, like the mixers
(docs/leaderboard.md has the runs).
AdamW at ``--lr`` with a cosine schedule, batch ``--batch``, one torch thread by default.
Validation accuracy every ``--eval-every`` steps on the validation split, the test accuracy of
the best validation checkpoint at the end; the training loss as means over the evaluation
windows. Nothing of this is part of ``lrm`` (it is no sequence mixer); it is a diagnostic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tqdm import tqdm  # noqa: E402

from lra.leaderboard.runner import SETTINGS  # noqa: E402


class PathCNN(nn.Module):
    """Three stages of (3x3 conv, ReLU) x 2 and a 2x2 max pool, global max pool, linear head."""

    def __init__(self, width: int = 16, n_classes: int = 2, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in (width, 2 * width, 2 * width):
            for c in (c_in, c_out):
                layers += [nn.Conv2d(c, c_out, 3, padding=1),
                           nn.BatchNorm2d(c_out) if norm else nn.Identity(), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 1, R, R) in [0, 1] -> logits (B, n_classes)."""
        return self.head(self.features(images).amax(dim=(2, 3)))


def load_splits(setting: str, data_dir: str | None = None
                ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str]:
    """The setting's Pathfinder splits as ``{split: (images (N, 1, R, R) float, labels (N,))}``,
    and a line naming the data."""
    from lra.data.pathfinder import PathfinderDataModule

    if setting not in SETTINGS or "pathfinder" not in SETTINGS[setting]["tasks"]:
        names = [n for n, s in SETTINGS.items() if "pathfinder" in s["tasks"]]
        raise SystemExit(f"--setting must be a leaderboard setting with Pathfinder, one of "
                         f"{names}; got {setting!r}")
    spec = SETTINGS[setting]
    init = spec["overrides"].get("data", {}).get("init_args", {})
    root = data_dir or spec["data_dir"]
    dm = PathfinderDataModule(data_dir=root, resolution=32,
                              contour_length=init.get("contour_length", 14),
                              distractors=init.get("distractors"), num_workers=0)
    try:
        dm.setup("fit")
    except FileNotFoundError as err:
        gen = " ".join(spec["data"]["pathfinder"])
        raise SystemExit(f"{err}\nGenerate the setting's data first: "
                         f"lra generate pathfinder --out {root} {gen}") from None
    out = {}
    for split, ds in dm.datasets.items():
        side = math.isqrt(ds.data.shape[1])
        images = ds.data.reshape(-1, 1, side, side).float() / 255.0
        out[split] = (images, ds.targets.clone())
    sizes = "/".join(str(len(out[s][1])) for s in ("train", "val", "test"))
    return out, f"{root} ({dm.difficulty}, {sizes} train/val/test)"


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 500) -> float:
    model.eval()
    hits = sum(int((model(images[i:i + batch]).argmax(-1) == labels[i:i + batch]).sum())
               for i in range(0, len(labels), batch))
    model.train()
    return hits / max(1, len(labels))


def train(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], *, steps: int, batch: int,
          lr: float, width: int, eval_every: int, seed: int, norm: bool = True,
          progress: bool = True) -> dict[str, Any]:
    """Train the CNN; returns the curve (step, mean training loss, validation accuracy) and the
    test accuracy at the best validation reading."""
    torch.manual_seed(seed)
    x_tr, y_tr = splits["train"]
    model = PathCNN(width, norm=norm)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(y_tr), generator=g), 0
    curve: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    window: list[float] = []
    t0 = time.time()
    bar = tqdm(total=steps, desc="pathfinder cnn", unit="step", disable=not progress)
    for step in range(1, steps + 1):
        if pos + batch > len(order):  # a new epoch, a new order
            order, pos = torch.randperm(len(y_tr), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        bar.update(1)
        if step % eval_every == 0 or step == steps:
            val = accuracy(model, *splits["val"])
            curve.append({"step": step, "train_loss": sum(window) / len(window),
                          "val_acc": val})
            window = []
            bar.set_postfix(loss=f"{curve[-1]['train_loss']:.3f}", val=f"{val:.3f}")
            if val > best[0]:
                best = (val, {k: v.clone() for k, v in model.state_dict().items()})
    bar.close()
    model.load_state_dict(best[1])
    y_te = splits["test"][1]
    majority = max(float((y_te == c).float().mean()) for c in (0, 1))
    return {"curve": curve, "best_val_acc": best[0], "test_acc": accuracy(model, *splits["test"]),
            "test_majority": majority, "params": sum(p.numel() for p in model.parameters()),
            "train_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--setting", default="pathfinder-easy",
                    help="the leaderboard setting whose Pathfinder data to use")
    ap.add_argument("--data-dir", default=None, help="default: the setting's data folder")
    ap.add_argument("--steps", type=int, default=2000, help="training steps")
    ap.add_argument("--batch", type=int, default=64, help="images per step")
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW's peak rate (cosine decay)")
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage")
    ap.add_argument("--no-norm", action="store_true",
                    help="no BatchNorm after the convolutions")
    ap.add_argument("--eval-every", type=int, default=200,
                    help="steps between validation readings")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="write the result and curve here")
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.width, args.eval_every) < 1 or not args.lr > 0:
        raise SystemExit("--steps, --batch, --width and --eval-every must be >= 1, --lr > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    splits, data = load_splits(args.setting, args.data_dir)
    result = train(splits, steps=args.steps, batch=args.batch, lr=args.lr, width=args.width,
                   eval_every=args.eval_every, seed=args.seed, norm=not args.no_norm)
    result.update(setting=args.setting, data=data, steps=args.steps, batch=args.batch,
                  lr=args.lr, width=args.width, seed=args.seed, threads=args.threads,
                  norm=not args.no_norm,
                  command="python scripts/pathfinder_control.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"CNN ({result['params']} parameters) on {data}: best validation "
          f"{100 * result['best_val_acc']:.1f}%, test {100 * result['test_acc']:.1f}% "
          f"(majority {100 * result['test_majority']:.1f}%), {result['train_s']} s")
    for row in result["curve"]:
        print(f"  step {row['step']:>6}  train loss {row['train_loss']:.3f}  "
              f"val {100 * row['val_acc']:.1f}%")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
