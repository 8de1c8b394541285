"""The process pool and the progress bar that the data generators share.

Both are context managers: ``progress_bar(enabled, name, total)`` yields an object with
``advance(n)`` (a rich progress bar, or nothing when disabled); ``worker_pool(workers)`` yields
a spawn-context process pool when ``workers > 1``, else None (run in this process).
"""

from __future__ import annotations

from multiprocessing import get_context


class _NoBar:
    def advance(self, n: int) -> None:
        pass


class progress_bar:
    """A rich progress bar (or nothing) as a context manager with ``advance(n)``."""

    def __init__(self, enabled: bool, name: str, total: int):
        self.enabled, self.name, self.total = enabled, name, total

    def __enter__(self):
        if not self.enabled:
            return _NoBar()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.name, total=self.total)
        bar = self.bar

        class _Bar:
            def advance(self, n: int) -> None:
                bar.advance(task, n)

        return _Bar()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


class worker_pool:
    """A process pool when ``workers > 1`` (else None, meaning: run in this process)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            self.pool = get_context("spawn").Pool(self.workers)
        return self.pool

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

