"""Claim check (Oryx, "Multi-Mixer Models"): with one layer that switches between attention and
a linear recurrence along the sequence, retrieval comes close to a Transformer with under 10%
of the tokens in attention mode.

    python scripts/claims/oryx.py                 # MQAR; recorded in docs/claims/oryx.md
    python scripts/claims/oryx.py --task passkey --steps 400 --out docs/claims/oryx_passkey
    python scripts/claims/oryx.py --steps 5 --n-test 50 --out runs/oryx-smoke   # a smoke run

Tasks (generated): ``mqar`` (lra.data.recall_tasks.mqar, Zoology's generator) at L = 64,
vocabulary 64, 8 key-value pairs; ``passkey`` (lra.data.recall_tasks.passkey) at L = 128, 5 digits.

Models: lrm.LRModel(head="lm"), 2 layers, d_model 64, no MLP in any block (the mixers alone do
the recall), trained with lra.quick.fit (AdamW, warmup + cosine, batch 32, the same steps and
learning rate for every model), scored with lra.quick.accuracy:

- oryx-gdn, oryx-mamba2: 2 heads, K = 16, V = 32; trained with the random schedule (each step
  draws p_attn from {0, 0.1, 0.5, 1} and places chunks of 8 tokens);
- attention (2 heads of 32, RoPE), gdn (2 heads, K = 16, V = 32), mamba2 (d_state 16, 4 heads
  of 32), and a layer-interleaved hybrid (pattern [gdn, attention]: 1 of the 2 layers, an
  attention share of 50%, the smallest a 2-layer pattern allows).

Oryx is evaluated at rand:p:8:seed for p in --p-attn (three placements each, averaged) and with
suffix attention on the query region only. Writes <out>.json (after every model, so that an
interrupted run keeps what it finished) and the plot <out>.png (accuracy against the share of
attention tokens); prints a markdown table to stdout, progress to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import build_lm, parser, setup, train

import lrm
from lra.data.recall_tasks import PASSKEY_VOCAB, mqar, passkey
from lra.quick import accuracy
from lrm.oryx_schedule import Schedule, use_schedule

D_MODEL, N_LAYERS, TRAIN_CHUNK = 64, 2, 8
ORYX = {"head_dim": 16, "n_heads": 2, "train_p_attn": (0.0, 0.1, 0.5, 1.0),
        "train_chunk": TRAIN_CHUNK, "chunk_size": 16, "schedule": "rec"}
MODELS: dict[str, dict] = {
    "oryx-gdn": {"mixer": "oryx", "mixer_kwargs": {**ORYX, "core": "gdn"}},
    "oryx-mamba2": {"mixer": "oryx", "mixer_kwargs": {**ORYX, "core": "mamba2"}},
    "attention": {"mixer": "attention", "mixer_kwargs": {"n_heads": 2}},
    "gdn": {"mixer": "gdn", "mixer_kwargs": {"n_heads": 2, "head_dim": 16}},
    "mamba2": {"mixer": "mamba2", "mixer_kwargs": {"d_state": 16, "head_dim": 32,
                                                   "chunk_size": 16}},
    "hybrid gdn+attention": {"pattern": ["gdn", "attention"],
                             "mixer_kwargs": {"gdn": {"n_heads": 2, "head_dim": 16},
                                              "attention": {"n_heads": 2}}},
}
SHARE = {"attention": 1.0, "gdn": 0.0, "mamba2": 0.0, "hybrid gdn+attention": 0.5}


TASKS: dict[str, dict] = {
    "mqar": dict(L=64, vocab=64, query=1 - 16 / 64,  # the query region: after the 8 pairs
                 make=lambda n, seed: mqar(n, 64, vocab_size=64, num_kv_pairs=8, seed=seed)),
    "passkey": dict(L=128, vocab=PASSKEY_VOCAB, query=5 / 128,  # QUERY + the digits
                    make=lambda n, seed: passkey(n, 128, n_digits=5, seed=seed)),
}


def build(spec: dict, vocab: int, seed: int) -> lrm.LRModel:
    return build_lm(d=D_MODEL, layers=N_LAYERS, vocab=vocab, seed=seed, mlp_ratio=0, **spec)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--n-train", type=int, default=8000, help="training sequences")
    p.add_argument("--n-test", type=int, default=500, help="held-out sequences")
    p.add_argument("--p-attn", nargs="+", type=float, default=[0, 0.05, 0.1, 0.25, 0.5, 1],
                   help="attention shares p_attn at which Oryx is evaluated")
    p.add_argument("--placements", type=int, default=3, help="random placements per p_attn")
    p.add_argument("--task", default="mqar", choices=list(TASKS), help="the task")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="models to train")
    p.add_argument("--out", type=Path, default=Path("docs/claims/oryx"),
                   help="output stem: writes <out>.json and <out>.png")
    args = setup(p)
    t_start = args.t_start
    shown_args = {k: v for k, v in vars(args).items() if k not in ("command", "t_start")}
    results: dict = {"args": {k: str(v) for k, v in shown_args.items()}, "tasks": {}}

    for task, t in [(args.task, TASKS[args.task])]:
        L = t["L"]
        x, y = t["make"](args.n_train, args.seed)
        xt, yt = t["make"](args.n_test, args.seed + 10_000)
        res: dict = {"L": L, "baselines": {}, "oryx": {}}
        for label in args.models:
            model = build(MODELS[label], t["vocab"], args.seed)
            n_params = sum(q.numel() for q in model.parameters())
            losses, secs = train(model, x, y, steps=args.steps, batch_size=32, lr=args.lr,
                                 seed=args.seed)
            final = sum(losses[-20:]) / min(20, len(losses))
            if label not in SHARE:  # an Oryx model: sweep the schedule
                rows = []
                for pa in args.p_attn:
                    accs, fracs = [], []
                    for s in range(args.placements):
                        sched = Schedule("rand", p=pa, n=TRAIN_CHUNK, seed=1000 + s)
                        with use_schedule(model, sched):
                            accs.append(accuracy(model, xt, yt))
                        fracs.append(sched.fraction(L))
                        if pa in (0.0, 1.0):
                            break  # every placement is the same
                    rows.append({"schedule": f"rand:{pa}:{TRAIN_CHUNK}", "p": pa,
                                 "share": sum(fracs) / len(fracs),
                                 "acc": sum(accs) / len(accs), "accs": accs})
                sfx = Schedule("suffix", p=t["query"])
                with use_schedule(model, sfx):
                    rows.append({"schedule": f"suffix:{t['query']:.4g} (query region)",
                                 "p": None, "share": sfx.fraction(L),
                                 "acc": accuracy(model, xt, yt)})
                res["oryx"][label] = {"params": n_params, "train_s": secs,
                                      "final_loss": final, "rows": rows}
                shown = ", ".join(f"{r['share']:.2f}:{r['acc']:.3f}" for r in rows)
            else:
                acc = accuracy(model, xt, yt)
                res["baselines"][label] = {"params": n_params, "train_s": secs,
                                           "final_loss": final, "share": SHARE[label],
                                           "acc": acc}
                shown = f"{acc:.3f}"
            print(f"{task} {label:22s} loss {final:.3f} {secs:5.0f}s  {shown}",
                  file=sys.stderr, flush=True)
            results["tasks"][task] = res
            results["wall_s"] = time.time() - t_start
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
            plot(results, args.out.with_suffix(".png"))
        report(task, res, args)
    print(f"\nwall time {results['wall_s']:.0f} s; wrote {args.out}.json and {args.out}.png")


def report(task: str, res: dict, args) -> None:
    print(f"\n### {task}, L={res['L']}: {N_LAYERS} layers, d={D_MODEL}, {args.steps} steps, "
          f"lr {args.lr}, seed {args.seed} (accuracy on {args.n_test} held-out sequences)\n")
    print("| model | params | attention share | accuracy | train time (s) |")
    print("|---|---|---|---|---|")
    for label, b in res["baselines"].items():
        print(f"| {label} | {b['params']} | {b['share']:.2f} | {b['acc']:.3f} | "
              f"{b['train_s']:.0f} |")
    for label, o in res["oryx"].items():
        for r in o["rows"]:
            print(f"| {label}, {r['schedule']} | {o['params']} | {r['share']:.3f} | "
                  f"{r['acc']:.3f} | {o['train_s']:.0f} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks_ = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks_), figsize=(5.2 * len(tasks_), 3.6), squeeze=False)
    for ax, (task, res) in zip(axes[0], tasks_.items(), strict=True):
        for label, o in res["oryx"].items():
            rnd = [r for r in o["rows"] if r["p"] is not None]
            line, = ax.plot([r["share"] for r in rnd], [r["acc"] for r in rnd], "o-",
                            label=f"{label} (random chunks)")
            sfx = [r for r in o["rows"] if r["p"] is None]
            ax.plot([r["share"] for r in sfx], [r["acc"] for r in sfx], "*", ms=13,
                    color=line.get_color(), label=f"{label} (suffix = query region)")
        for label, b in res["baselines"].items():
            ax.plot([b["share"]], [b["acc"]], "s", ms=8, label=label)
        ax.axvline(0.1, color="gray", ls=":", lw=1)
        ax.set_xlabel("share of tokens in attention mode")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task}, L={res['L']}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
