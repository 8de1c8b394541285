"""``python -m lra.leaderboard``: the same as ``lra leaderboard``."""

from lra.leaderboard import main

main()
