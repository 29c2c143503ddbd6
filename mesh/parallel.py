"""Run one CPU-bound function over a batch on several threads.

Signature verification dominates the receive path, and ``cryptography`` releases
the GIL while it verifies, so a batch of received frames is checked faster when
it is split across threads. The calling thread works on the first share itself
rather than waiting idle, so ``threads = 2`` needs only one pool thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["SplitMap"]

T = TypeVar("T")
R = TypeVar("R")


class SplitMap:
    """``map`` over a list on up to ``threads`` threads; results keep their order."""

    def __init__(self, threads: int, *, items_per_thread_min: int = 2) -> None:
        if threads < 1:
            raise ValueError(f"threads ({threads}) must be at least 1")
        self.threads = threads
        self.items_per_thread_min = items_per_thread_min
        self._pool = (
            ThreadPoolExecutor(threads - 1, thread_name_prefix="agentmesh-verify")
            if threads > 1
            else None
        )

    def __call__(self, function: Callable[[T], R], items: list[T]) -> list[R]:
        """``[function(item) for item in items]``, computed in parallel when worth it."""
        shares = min(self.threads, len(items) // self.items_per_thread_min)
        if self._pool is None or shares < 2:
            return [function(item) for item in items]
        size = -(-len(items) // shares)
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        futures = [self._pool.submit(_apply, function, chunk) for chunk in chunks[1:]]
        results = _apply(function, chunks[0])
        for future in futures:
            results += future.result()
        return results

    def close(self) -> None:
        """Stop the pool threads (work already submitted finishes first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _apply(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]
