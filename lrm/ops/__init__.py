"""The math of each mixer, in the same tiers for every op: ``<op>_recurrent_ref`` (the token
loop, the oracle), ``<op>_ref`` (the chunked or parallel pure-PyTorch algorithm), ``<op>_lean``
(a memory-lean autograd path, where one exists) and ``<op>(..., backend="auto")`` (the single
dispatch point). State arguments are spelled ``initial_state`` and ``return_final_state``."""
