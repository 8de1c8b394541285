"""Synthetic recall tasks, generated on the fly and seeded. No download.

Every generator returns ``(inputs, targets)``: LongTensors of shape (n, seq_len). The model reads
``inputs`` causally and is scored at position t on ``targets[:, t]``; ``targets`` is -100 (the
cross-entropy ignore index) everywhere else, so the loss and the accuracy count only the recall
positions.

- :func:`mqar`: multi-query associative recall, as Zoology's generator (Arora et al., 2023,
  "Zoology: Measuring and Improving Recall in Efficient Language Models"): key-value pairs, then
  the keys queried again at power-law distributed gaps; the model must emit each key's value.
- :func:`selective_copying`: the Mamba paper's selective copying (Gu & Dao, 2023, §4.1.1): data
  tokens scattered among blanks must be copied out in order after a run of marker tokens.
- :func:`induction_heads`: the Mamba paper's induction-heads task: after a special token, recall
  the token that followed the special token's earlier occurrence.
- :func:`passkey`: passkey retrieval (Mohtashami & Jaggi, 2023): a number hidden at a random
  depth in repeated filler text, asked for at the end.

Each task has a length-extrapolation mode through :func:`extrapolation_sets`: train at L, test
at several longer lengths with the same task settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lra.objective import IGNORE


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _choose(n: int, k: int, low: int, high: int, g: torch.Generator) -> torch.Tensor:
    """n rows of k distinct integers from [low, high), uniformly."""
    if high - low < k:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    return torch.rand(n, high - low, generator=g).argsort(dim=1)[:, :k] + low


def mqar(n: int, seq_len: int, *, vocab_size: int = 8192, num_kv_pairs: int = 8,
         power_a: float = 0.01, random_non_queries: bool = True,
         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall, faithful to Zoology's ``multiquery_ar`` generator.

    Layout of one example (before the next-token shift), with C = 2·num_kv_pairs::

        k1 v1 k2 v2 ... kC/2 vC/2 | query region of length seq_len - C
                                     key k_i placed at offset 2·gap_i, its value at 2·gap_i + 1

    - keys come from the lower half of the vocabulary (ids 1..vocab/2-1), values from the upper
      half (vocab/2..vocab-1); each key occurs once per example, in random order;
    - the gaps are drawn without replacement from 0..(seq_len - C)/2 - 1 with probability
      ∝ power_a · g^(power_a - 1), so most queries come soon after the context and a few far;
    - loss only on query positions: at the position of a queried key the target is its value;
    - ``random_non_queries``: the unused positions hold random tokens instead of 0.

    Zoology also asserts vocab_size > seq_len; we do not, so that a model trained at L can be
    tested at 16L with the same vocabulary (length extrapolation).
    """
    C = 2 * num_kv_pairs
    if seq_len % 2 or seq_len < 2 * C:
        raise ValueError(f"MQAR needs an even seq_len >= 4·num_kv_pairs = {2 * C}, "
                         f"got {seq_len}")
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"vocab_size={vocab_size} has too few keys for {num_kv_pairs} pairs")
    g = _gen(seed)
    half = vocab_size // 2
    keys = _choose(n, num_kv_pairs, 1, half, g)  # (n, P)
    values = _choose(n, num_kv_pairs, half, vocab_size, g)  # (n, P)
    space = (seq_len - C) // 2
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(n, -1), num_kv_pairs, replacement=False,
                             generator=g)  # (n, P)
    # the unshifted sequence has seq_len + 1 tokens; inputs = seq[:-1], labels = seq[1:]
    seq = torch.zeros(n, seq_len + 1, dtype=torch.long)
    seq[:, 0:C:2], seq[:, 1:C:2] = keys, values
    seq.scatter_(1, C + 2 * gaps, keys)
    labels = torch.full((n, seq_len + 1), IGNORE, dtype=torch.long)
    labels.scatter_(1, C + 2 * gaps + 1, values)
    inputs, targets = seq[:, :-1].clone(), labels[:, 1:].clone()
    if random_non_queries:
        noise = torch.randint(vocab_size, inputs.shape, generator=g)
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, targets


def selective_copying(n: int, seq_len: int, *, vocab_size: int = 16, n_tokens: int = 16,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective copying (Mamba paper, §4.1.1 and Figure 2).

    Token ids: 0 blank, 1 marker, 2..vocab_size-1 data. The first seq_len - n_tokens positions
    hold ``n_tokens`` data tokens at random positions among blanks; the last n_tokens positions
    are markers, and at the i-th marker the target is the i-th data token in order of
    appearance. Positions of the data vary, so the task needs content-aware (selective) memory.
    """
    ctx = seq_len - n_tokens
    if ctx < n_tokens or vocab_size < 3:
        raise ValueError(f"need seq_len >= 2·n_tokens and vocab_size >= 3, got seq_len={seq_len},"
                         f" n_tokens={n_tokens}, vocab_size={vocab_size}")
    g = _gen(seed)
    data = torch.randint(2, vocab_size, (n, n_tokens), generator=g)
    pos = _choose(n, n_tokens, 0, ctx, g).sort(dim=1).values  # (n, n_tokens), increasing
    inputs = torch.zeros(n, seq_len, dtype=torch.long)
    inputs.scatter_(1, pos, data)
    inputs[:, ctx:] = 1
    targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    targets[:, ctx:] = data
    return inputs, targets


def induction_heads(n: int, seq_len: int, *, vocab_size: int = 16,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction heads (Mamba paper, §4.1.2; Olsson et al., 2022).

    Token ids: 0 the special token, 1..vocab_size-1 ordinary. A random ordinary sequence holds
    the special token once at a random position p < seq_len - 2, followed by a token X; the
    sequence ends with the special token, where the target is X. Only the last position is
    scored.
    """
    if seq_len < 4 or vocab_size < 3:
        raise ValueError(f"need seq_len >= 4 and vocab_size >= 3, got {seq_len}, {vocab_size}")
    g = _gen(seed)
    inputs = torch.randint(1, vocab_size, (n, seq_len), generator=g)
    p = torch.randint(0, seq_len - 2, (n, 1), generator=g)
    inputs.scatter_(1, p, 0)
    inputs[:, -1] = 0
    answer = inputs.gather(1, p + 1).squeeze(1)
    targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    targets[:, -1] = answer
    return inputs, targets


# passkey token ids: digits 0..9, then markers, then the filler vocabulary
PASSKEY_KEY, PASSKEY_QUERY, PASSKEY_FILLER0 = 10, 11, 12
PASSKEY_FILLER = torch.tensor([12, 13, 14, 15, 16, 17, 18, 19])  # "the grass is green ..."
PASSKEY_VOCAB = 20


def passkey(n: int, seq_len: int, *, n_digits: int = 5, seed: int = 0,
            filler: str = "repeat") -> tuple[torch.Tensor, torch.Tensor]:
    """Passkey retrieval (landmark attention, Mohtashami & Jaggi 2023; RULER's single needle).

    The sentence "the pass key is N" becomes ``KEY d1 .. dn`` hidden at a uniformly random depth
    in filler; the sequence ends with ``QUERY d1 .. d(n-1)``, and the model must produce the
    digits: the target at QUERY is d1, at d1 it is d2, and so on (teacher forcing, so one
    forward pass scores the whole answer). Vocabulary: ``PASSKEY_VOCAB`` = 20.

    ``filler``: ``"repeat"`` (the papers' form: one fixed sentence repeated) or ``"random"``
    (each filler token drawn uniformly from the same sentence's tokens, so no two stretches of
    filler look alike; the digits and the key's depth are those of ``"repeat"`` for the same
    seed). Repeated filler makes a model's inputs, and so anything computed from a short window
    of them (a convolution, Mamba's Δ), take a handful of values only.
    """
    if filler not in ("repeat", "random"):
        raise ValueError(f"filler must be 'repeat' or 'random', got {filler!r}")
    tail = n_digits  # QUERY + first n-1 digits
    body = seq_len - tail
    if body < n_digits + 1 + 1:
        raise ValueError(f"seq_len={seq_len} is too short for a {n_digits}-digit passkey")
    g = _gen(seed)
    digits = torch.randint(0, 10, (n, n_digits), generator=g)
    depth = torch.randint(0, body - n_digits, (n, 1), generator=g)  # where KEY goes
    if filler == "random":  # drawn after the depth, so digits and depth match "repeat"
        inputs = PASSKEY_FILLER[torch.randint(0, len(PASSKEY_FILLER), (n, body), generator=g)]
    else:
        reps = math.ceil(body / len(PASSKEY_FILLER))
        inputs = PASSKEY_FILLER.repeat(reps)[:body].repeat(n, 1)
    inputs.scatter_(1, depth, PASSKEY_KEY)
    inputs.scatter_(1, depth + 1 + torch.arange(n_digits), digits)
    query = torch.cat([torch.full((n, 1), PASSKEY_QUERY), digits[:, :-1]], dim=1)
    inputs = torch.cat([inputs, query], dim=1)
    targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    targets[:, body:] = digits
    return inputs, targets


TASKS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "mqar": mqar,
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
    "passkey": passkey,
}


def vocab_size_of(task: str, **kwargs) -> int:
    """The number of token ids a task's inputs and targets use."""
    if task == "passkey":
        return PASSKEY_VOCAB
    defaults = {"mqar": 8192, "selective_copying": 16, "induction_heads": 16}
    return int(kwargs.get("vocab_size", defaults[task]))


def make(task: str, n: int, seq_len: int, *, seed: int = 0,
         **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` examples of ``task`` at ``seq_len``; ``kwargs`` are the task's options."""
    if task not in TASKS:
        raise ValueError(f"unknown recall task {task!r}; valid: {', '.join(TASKS)}")
    return TASKS[task](n, seq_len, seed=seed, **kwargs)


def extrapolation_sets(task: str, n: int, lengths: list[int], *, seed: int = 10_000,
                       **kwargs) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Test sets of the same task at several lengths (train at L, test at 2L..16L)."""
    return {L: make(task, n, L, seed=seed + i, **kwargs) for i, L in enumerate(lengths)}
