"""The wait-for graph of the whole mesh, in the Raft store: deadlocks refused across nodes.

How this works
--------------
Each recorded wait is a key ``waits/<waiter>/<holder>`` (its value says since
when and on which node). A guard key, ``waits.version``, is bumped by every
wait that is added, in the same log entry (``CompareAndSetWithWrites``), so
adding waits is serialised: ``MeshWaits.waiting(waiter, holder)`` reads the guard
and every edge, rebuilds the ``WaitForGraph``, refuses with ``DeadlockError`` if
the new edge would close a cycle, and otherwise writes the edge *only if the
guard did not move* since the read. Two tasks on different nodes closing a cycle
at the same moment therefore cannot both slip through: the second one's write
fails, it reads again, and now sees the cycle. Removing a wait needs no guard
(it cannot close a cycle).

A wait's edge is removed when its block ends (normally, by an error, by the
timeout or by cancellation). An edge whose task died with its node stays until
``stale_after_s`` passed (it is then ignored and cleaned up by the next wait),
so a crash cannot wedge the graph for ever.

Every wait has a timeout (``WaitTimeout`` after it); ``bounded_wait`` waits for
the condition itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from agents.coordination.waits import DeadlockError, WaitForGraph, WaitTimeout
from consensus.kvstore import CompareAndSetWithWrites
from mesh.errors import MeshError

__all__ = ["GUARD_KEY", "WAITS_PREFIX", "MeshWaits"]

WAITS_PREFIX = "waits/"
GUARD_KEY = "waits.version"
_ADD_ATTEMPTS_MAX = 32


class MeshWaits:
    """Waits between tasks anywhere in the mesh (see the module docstring)."""

    def __init__(self, kv: Any, *, node: str = "", stale_after_s: float = 600.0,
                 edges_max: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.node = node
        self.stale_after_s = stale_after_s
        self.edges_max = edges_max
        self._clock = clock
        self.refused = 0
        self.timed_out = 0

    @asynccontextmanager
    async def waiting(self, waiter: str, holder: str, *,
                      timeout_s: float) -> AsyncIterator[None]:
        """Record ``waiter`` waiting for ``holder`` while the block runs (at most
        ``timeout_s``, then ``WaitTimeout``); ``DeadlockError`` at once, nothing
        recorded, when the wait would close a cycle anywhere in the mesh."""
        key = f"{WAITS_PREFIX}{waiter}/{holder}"
        await self._add(waiter, holder, key)
        try:
            with anyio.move_on_after(timeout_s) as scope:
                yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.kv.delete(key)
        if scope.cancelled_caught:
            self.timed_out += 1
            raise WaitTimeout(f"{holder} (waited for by {waiter})", timeout_s)

    async def graph(self) -> tuple[WaitForGraph, int, list[str]]:
        """The current graph, the guard's version, and the keys of stale edges."""
        guard = await self.kv.get(GUARD_KEY)
        version = 0 if guard is None else guard.version
        items, _ = await self.kv.list(WAITS_PREFIX, limit=self.edges_max)
        now = self._clock()
        edges: list[tuple[str, str]] = []
        stale: list[str] = []
        for item in items:
            parts = item.key[len(WAITS_PREFIX):].split("/")
            if len(parts) != 2:
                continue
            try:
                since = float(json.loads(item.value).get("since", now))
            except (ValueError, AttributeError):
                since = now
            if now - since > self.stale_after_s:
                stale.append(item.key)
            else:
                edges.append((parts[0], parts[1]))
        return WaitForGraph.from_edges(edges), version, stale

    async def _add(self, waiter: str, holder: str, key: str) -> None:
        for _ in range(_ADD_ATTEMPTS_MAX):
            graph, version, stale = await self.graph()
            cycle = graph.would_deadlock(waiter, holder)
            if cycle is not None:
                self.refused += 1
                raise DeadlockError(cycle, waiter)
            value = json.dumps({"since": self._clock(), "node": self.node}).encode()
            writes: tuple[tuple[str, bytes | None], ...] = (
                (key, value), *((old, None) for old in stale[:6]))
            response = await self.kv.write(CompareAndSetWithWrites(
                GUARD_KEY, str(version + 1).encode(), version, None, writes))
            if response.ok:
                return
        raise MeshError(f"could not record {waiter} waiting for {holder}: the wait graph "
                        f"kept changing ({_ADD_ATTEMPTS_MAX} attempts)")
