"""What one generated token costs after a context of T tokens: attention's KV cache against the
fixed-size state of the recurrent mixers.

    python scripts/decode_cost.py --mixers attention gdn mamba2 --contexts 256 1024 4096

For each mixer and context length T, an ``LRModel`` (``--layers`` layers of width ``--d``,
vocabulary 256, batch 1, float32, eval mode) reads a random prompt of T tokens in one
``step`` (the prefill), then decodes ``--tokens`` tokens one ``step`` at a time. Reported:
the median CPU time of one decoding step (``time.process_time``: the work of this process,
which other work on a shared machine does not inflate the way it inflates wall time; with one
thread it is the step's cost), and the state the model carries per sequence (floats summed over
layers: ``state_size(T)`` of each mixer). All cases run in one process,
one after the other, so the times are comparable with each other within a run and not across
machines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lrm


def decode_cost(mixer: str, context: int, *, d: int, layers: int, tokens: int
                ) -> tuple[float, int]:
    """(median CPU seconds per decoded token, state floats per sequence after the context)."""
    torch.manual_seed(0)
    model = lrm.LRModel(lrm.ModelConfig(mixer=mixer, d_model=d, n_layers=layers,
                                        vocab_size=256, head="lm")).eval()
    prompt = torch.randint(0, 256, (1, context))
    times = []
    with torch.no_grad():
        state = model.init_state(1)
        logits, state = model.step(prompt, state)
        nxt = logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            t0 = time.process_time()
            logits, state = model.step(nxt, state)
            times.append(time.process_time() - t0)
            nxt = logits[:, -1:].argmax(-1)
    floats = sum(b.mixer.state_size(context) for b in model.blocks)
    return statistics.median(times), floats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--mixers", nargs="+", default=["attention", "gdn", "mamba2"],
                    help="registry names")
    ap.add_argument("--contexts", nargs="+", type=int, default=[256, 1024, 4096],
                    help="tokens read before decoding")
    ap.add_argument("--d", type=int, default=256, help="model width")
    ap.add_argument("--layers", type=int, default=4, help="blocks")
    ap.add_argument("--tokens", type=int, default=32, help="decoded tokens timed per case")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"d={args.d}, {args.layers} layers, batch 1, float32, {args.threads} thread(s), "
          f"{args.tokens} decoding steps per case\n")
    print("| mixer | context T | CPU ms per token | state floats per sequence |")
    print("|---|---|---|---|")
    for mixer in args.mixers:
        for T in args.contexts:
            sec, floats = decode_cost(mixer, T, d=args.d, layers=args.layers,
                                      tokens=args.tokens)
            print(f"| {mixer} | {T} | {1e3 * sec:.2f} | {floats:,} |", flush=True)


if __name__ == "__main__":
    main()
