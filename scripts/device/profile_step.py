"""Where one training step of an LRA recipe spends its time on a GPU: forward, backward and
optimizer timed apart (synchronised), then ``torch.profiler`` over a few steps, the operations
sorted by GPU time and by CPU time. S4's ListOps recipe took 198 ms a step on an H200
(docs/leaderboard.md), and kernel launches alone do not explain that.

    python scripts/device/profile_step.py OUT_DIR                          # S4 ListOps recipe
    python scripts/device/profile_step.py OUT_DIR --recipe configs/lra/s4/listops.yaml
    python scripts/device/profile_step.py OUT_DIR --dry-run                # CPU, tiny sizes

The model is the recipe's ``model.model`` section (ListOps' vocabulary and classes), on random
tokens of the recipe's length, batch and learning rates (lrm.optim.param_groups), without the
Lightning loop: what is left is the step itself. Writes ``OUT_DIR/profile_step.json`` (the
phase times) and ``OUT_DIR/profile_step.txt`` (the two tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lra.data.listops import ListOpsDataModule
from lrm.model import LRModel
from lrm.optim import param_groups


def build(recipe: Path, dry: bool) -> tuple[torch.nn.Module, dict, int, int]:
    """The recipe's model (its ``model.model``), its lr and weight decay, batch and length."""
    cfg = yaml.safe_load(recipe.read_text())
    model_cfg = dict(cfg["model"]["model"])
    model_cfg.update(vocab_size=ListOpsDataModule.vocab_size, n_classes=ListOpsDataModule.n_classes,
                     head="classify", pooling="mean")
    batch, length = cfg.get("data", {}).get("batch_size", 32), 2048
    if dry:  # the same code path at a size a CPU runs in seconds
        model_cfg.update(d_model=16, n_layers=1)
        model_cfg.setdefault("mixer_kwargs", {})
        if "l_max" in model_cfg["mixer_kwargs"]:
            model_cfg["mixer_kwargs"]["l_max"] = 64
        batch, length = 2, 64
    model = LRModel(model_cfg)
    opt = {"lr": cfg["model"].get("lr", 1e-3),
           "weight_decay": cfg["model"].get("weight_decay", 0.0)}
    return model, opt, batch, length


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for profile_step.json and profile_step.txt")
    ap.add_argument("--recipe", type=Path, default=Path("configs/lra/s4/listops.yaml"),
                    help="a recipe config whose model.model section is profiled")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per phase measurement")
    ap.add_argument("--profiled", type=int, default=5, help="steps under torch.profiler")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes")
    args = ap.parse_args(argv)
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("profile_step.py needs a CUDA GPU; --dry-run checks it on a CPU")
    if args.dry_run:
        args.steps, args.profiled = min(args.steps, 2), min(args.profiled, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    model, opt_kw, batch, length = build(args.recipe, args.dry_run)
    model = model.to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, **opt_kw))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, ListOpsDataModule.vocab_size, (batch, length), generator=gen).to(dev)
    labels = torch.randint(0, ListOpsDataModule.n_classes, (batch,), generator=gen).to(dev)

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    def step(times: dict[str, list[float]] | None = None) -> None:
        t0 = time.perf_counter()
        out = model(tokens)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits.float(), labels)
        if times is not None:
            sync()
        t1 = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if times is not None:
            sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if times is not None:
            for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2),
                         ("step", t3 - t0)):
                times[k].append(1e3 * v)

    for _ in range(3):  # warm-up: cuFFT plans, the allocator, autotuning
        step()
    times: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "optimizer", "step")}
    for _ in range(args.steps):
        step(times)
    # the same steps without the syncs between phases: what training pays
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    free_ms = 1e3 * (time.perf_counter() - t0) / args.steps
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.profiled):
            step()
    ev = prof.key_averages()
    device_key = "self_device_time_total" if dev == "cuda" else "self_cpu_time_total"
    tables = [f"{args.profiled} steps of {args.recipe} (batch {batch}, length {length}) on "
              f"{torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu (dry run)'}, "
              f"torch {torch.__version__}",
              f"\nby {device_key}:\n" + ev.table(sort_by=device_key, row_limit=30),
              "\nby cpu_time_total:\n" + ev.table(sort_by="cpu_time_total", row_limit=30)]
    (args.out / "profile_step.txt").write_text("\n".join(tables))
    launches = sum(e.count for e in ev if e.device_type.name == "CUDA") if dev == "cuda" else None
    summary = {"recipe": str(args.recipe), "batch": batch, "length": length, "device": dev,
               "params": sum(p.numel() for p in model.parameters()),
               "ms_median": {k: round(statistics.median(v), 2) for k, v in times.items()},
               "ms_per_step_unsynced": round(free_ms, 2),
               "gpu_kernels_per_step": launches and launches / args.profiled}
    (args.out / "profile_step.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
