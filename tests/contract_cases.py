"""The configurations the mixer contract (tests/test_contract.py) is checked in, per mixer.

``CASES[mixer][case]`` holds the keyword arguments of ``lrm.mixer(mixer, 64, **kwargs)``; every
case becomes one set of contract tests, with the id ``<mixer>-<case>``. A registered mixer with
no entry here is checked with its defaults (case ``default``), so a new mixer is covered with no
new test code; add its cases here when its options change the math or its defaults are too big
for the suite's 37-token input (windows, segments and chunks should be crossed by it). The
equation tests of tests/mixers/ reuse these cases as their first options.
"""

from __future__ import annotations

CASES: dict[str, dict[str, dict]] = {
    "attention": {"default": {}, "no_rope": {"rope": False}},
    "fox": {
        "default": {},  # FoX (Pro)
        "no_pro": {"pro": False},  # FoX (LLaMA)
        "pro_no_kv_shift": {"k_shift": False, "v_shift": False},
        "base_plus_qk_norm": {"pro": False, "qk_norm": True},
        "pro_gate_no_norm": {"output_norm": False},  # output gate without output norm
    },
    "gdn": {
        "default": {"head_dim": 16},
        "deltanet": {"head_dim": 16, "use_forget_gate": False, "use_gate": False},
        "no_delta": {"head_dim": 16, "delta_rule": False},
        "gdn2": {"head_dim": 16, "gates": "gdn2"},
    },
    "landmark": {
        "grouped": {"block_len": 5},  # training mode, several blocks in the test length
        "retrieval_k2": {"block_len": 5, "retrieval_topk": 2},
        "retrieval_k1": {"block_len": 3, "retrieval_topk": 1},
        # upstream's long-input evaluation: grouped softmax in chunks of 6, retrieval before
        "retrieval_chunked": {"block_len": 3, "retrieval_topk": 1, "retrieval_chunk": 6},
    },
    "mamba": {
        "default": {},
        # small and fast; the scan's chunk of 16 does not divide L = 37
        "small": {"d_state": 8, "dt_rank": 4, "d_conv": 3, "chunk_size": 16},
        # uncalibrated, the filter is the identity: checks the plumbing keeps the contract
        "longmamba": {"d_state": 8, "chunk_size": 16, "longmamba": {}},
    },
    "mamba2": {
        "default": {},
        # small and fast: 8 heads of 16, two groups, SSD chunks of 16 (37 = 2·16 + 5)
        "small": {"d_state": 8, "head_dim": 16, "ngroups": 2, "chunk_size": 16},
        "no_norm_dhdim": {"d_state": 8, "head_dim": 16, "chunk_size": 16, "rmsnorm": False,
                          "D_has_hdim": True},
        # uncalibrated, the filter is the identity: checks the plumbing keeps the contract
        "longmamba": {"d_state": 8, "head_dim": 16, "chunk_size": 16, "longmamba": {}},
    },
    "oryx": {
        # 37 tokens in the conformance suite: each schedule below mixes both modes there
        "default": {"head_dim": 16, "schedule": "every:8:3", "train_p_attn": None},
        "mamba2_from": {"core": "mamba2", "head_dim": 16, "schedule": "from:20",
                        "train_p_attn": None},
        "mamba2_every": {"core": "mamba2", "head_dim": 16, "schedule": "every:5:1",
                         "train_p_attn": None, "chunk_size": 16},
        "gdn_rand": {"head_dim": 16, "schedule": "rand:0.4:4:1", "train_p_attn": None},
        # training draws (train mode) and a random schedule (eval) on the Mamba-2 core
        "mamba2_train": {"core": "mamba2", "head_dim": 16, "schedule": "rand:0.5:3:2",
                         "train_p_attn": (0.5,), "train_chunk": 4},
    },
    "s4": {
        "default": {},
        "short_lmax": {"d_state": 16, "l_max": 16, "n_ssm": None},  # L=37 > l_max: doubling
    },
    "s4d": {
        "default": {},
        "lin_bilinear": {"init": "lin", "disc": "bilinear", "d_state": 16},
        "inv": {"init": "inv", "n_ssm": None, "d_state": 8},
        "real": {"init": "real", "n_ssm": 4},
    },
    "titans": {
        # small windows, segments and chunks so that a 37-token test crosses all of them
        "mac": {"variant": "mac", "segment_len": 16, "chunk_size": 8, "n_persistent": 4},
        "mac_norm_residual": {"variant": "mac", "segment_len": 16, "chunk_size": 8,
                              "n_persistent": 4, "memory_norm_residual": True},
        "mag": {"variant": "mag", "window": 8, "chunk_size": 8, "n_persistent": 4},
        "mal": {"variant": "mal", "window": 8, "chunk_size": 8, "n_persistent": 4},
        "lmm": {"variant": "lmm", "chunk_size": 8},
        "lmm_linear": {"variant": "lmm", "chunk_size": 8, "depth": 1},
        # the attention alone: one layer sees only w tokens back, so the conformance suite (whose
        # bidirectional check needs the first output to depend on the last input) gets w > L
        "swa": {"variant": "swa", "window": 48, "n_persistent": 4},
        "mag_no_persistent_no_conv": {"variant": "mag", "window": 8, "chunk_size": 8,
                                      "n_persistent": 0, "d_conv": 0},
    },
}
