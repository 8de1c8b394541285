"""The math of each mixer: ``<op>_recurrent_ref`` (the oracle), ``<op>_ref`` (the fast
pure-PyTorch algorithm) and ``<op>(..., backend="auto")`` (the single dispatch point)."""
