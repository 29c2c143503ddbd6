"""Deadlock prevention: a wait-for graph, refused waits that would close a cycle, bounded waits.

How this works
--------------
A *wait* is an edge ``waiter -> holder`` between task (or agent) ids: the waiter
cannot go on until the holder does something (releases a resource, answers).
Tasks deadlock exactly when these edges form a cycle. ``WaitForGraph`` keeps the
edges, finds a cycle (``find_cycle``), and tells whether one more wait would
close one (``would_deadlock``), which is a path from the holder back to the
waiter. It is bounded (``nodes_max``, ``edges_max``): a full graph refuses a new
wait with ``WaitGraphFull`` rather than grow. A wait recorded twice (an agent
waiting on the same holder from two tasks) is two edges and must be removed
twice. The graph is plain data, rebuilt from its edges with ``from_edges`` and
listed with ``edges()``, so a distributed version can keep the edges in the Raft
store and rebuild the graph on any node.

``WaitRegistry`` is the in-process coordinator. ``async with
registry.waiting(waiter, holder, timeout_s=...)`` prevents rather than detects:
before the wait is recorded, it checks whether the new edge would close a cycle,
and if so refuses *that* wait at once with ``DeadlockError`` (the waiter closing
the cycle is the victim: every other task of the cycle is already waiting, and
refusing the newcomer breaks the cycle without touching them). Otherwise the
edge is recorded for the duration of the block and removed when it ends,
normally, by an error, by a timeout or by cancellation. The check and the
insertion run without an ``await`` in between, so concurrent tasks of one event
loop cannot both slip past the check.

Every wait has a timeout: the block of ``waiting`` runs within ``timeout_s``
and ``WaitTimeout`` ends it when that passes; ``bounded_wait(what, event or
predicate, timeout_s)`` waits for an ``anyio.Event`` (or polls an async
predicate every ``poll_interval_s``, ``POLL_INTERVAL_S`` by default) and raises
``WaitTimeout`` naming what it waited for and how long. Both messages name the
wait, so a stuck system says what it was stuck on.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import anyio

from mesh.errors import ConfigError, MeshError, Overloaded

__all__ = [
    "EDGES_MAX",
    "NODES_MAX",
    "NODE_ID_CHARS_MAX",
    "POLL_INTERVAL_S",
    "WAIT_TIMEOUT_S_MAX",
    "DeadlockError",
    "WaitError",
    "WaitForGraph",
    "WaitGraphFull",
    "WaitRegistry",
    "WaitTimeout",
    "bounded_wait",
]

NODES_MAX = 10_000
"""Default most ids (tasks or agents) with a wait in one graph."""
EDGES_MAX = 100_000
"""Default most waits recorded at once in one graph (a repeated wait counts again)."""
NODE_ID_CHARS_MAX = 256
"""Longest task or agent id."""
POLL_INTERVAL_S = 0.05
"""Default interval at which ``bounded_wait`` polls a predicate: a met condition is
seen at most this late, at the cost of one predicate call per interval."""
WAIT_TIMEOUT_S_MAX = 86400.0
"""Longest timeout of one wait, in seconds."""

_LIMIT_MAX = 10_000_000


class WaitError(MeshError):
    """Root of the errors of waits: a bad id, a deadlock refused, a timeout."""


class WaitGraphFull(WaitError, Overloaded):
    """The wait-for graph holds ``nodes_max`` ids or ``edges_max`` waits: the wait was
    refused rather than recorded."""


class DeadlockError(WaitError):
    """A wait refused because it would close ``cycle`` (its waiter is the victim)."""

    def __init__(self, cycle: Sequence[str], victim: str) -> None:
        self.cycle = list(cycle)
        self.victim = victim
        chain = " waits for ".join([*self.cycle, self.cycle[0]])
        super().__init__(f"deadlock: {chain}; broken by refusing {victim}'s wait")


class WaitTimeout(WaitError):
    """A wait that did not end within its timeout."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what = what
        self.timeout_s = timeout_s
        super().__init__(f"gave up waiting for {what} after {timeout_s:g} s")


class WaitForGraph:
    """Who waits for whom (see the module docstring). Not thread-safe; no I/O."""

    def __init__(self, *, nodes_max: int = NODES_MAX, edges_max: int = EDGES_MAX) -> None:
        for name, value in (("nodes_max", nodes_max), ("edges_max", edges_max)):
            if type(value) is not int or not 1 <= value <= _LIMIT_MAX:
                raise ConfigError(f"wait-for graph {name} ({value!r}) must be an integer from "
                                  f"1 to {_LIMIT_MAX}")
        self.nodes_max = nodes_max
        self.edges_max = edges_max
        # waiter -> holder -> how many times that wait is recorded
        self._out: dict[str, dict[str, int]] = {}
        self._in: dict[str, set[str]] = {}
        # id -> distinct edges touching it; an id with none is not in the graph
        self._touching: dict[str, int] = {}
        self._waits = 0

    @classmethod
    def from_edges(cls, edges: Iterable[Sequence[str]], *, nodes_max: int = NODES_MAX,
                   edges_max: int = EDGES_MAX) -> WaitForGraph:
        """A graph holding ``edges``: (waiter, holder) pairs, as ``edges()`` lists them
        (or as lists, their JSON form); a repeated pair is a repeated wait."""
        graph = cls(nodes_max=nodes_max, edges_max=edges_max)
        for edge in edges:
            if isinstance(edge, str | bytes) or not isinstance(edge, Sequence) or len(edge) != 2:
                raise WaitError(f"edge {edge!r} must be a (waiter, holder) pair")
            graph.add_wait(edge[0], edge[1])
        return graph

    def edges(self) -> list[tuple[str, str]]:
        """Every wait as (waiter, holder), sorted, a repeated wait listed as often."""
        return [(waiter, holder)
                for waiter in sorted(self._out)
                for holder in sorted(self._out[waiter])
                for _ in range(self._out[waiter][holder])]

    def nodes(self) -> list[str]:
        """The ids with at least one wait, sorted."""
        return sorted(self._touching)

    def holders_of(self, waiter: str) -> list[str]:
        """Whom ``waiter`` waits for, sorted."""
        return sorted(self._out.get(waiter, {}))

    def waiters_for(self, holder: str) -> list[str]:
        """Who waits for ``holder``, sorted."""
        return sorted(self._in.get(holder, set()))

    def __len__(self) -> int:
        """The waits recorded (a repeated wait counting again)."""
        return self._waits

    def add_wait(self, waiter: str, holder: str) -> None:
        """Record that ``waiter`` waits for ``holder``, even if that closes a cycle
        (``WaitRegistry`` checks first). ``WaitGraphFull`` beyond the limits."""
        _check_id(waiter, "waiter")
        _check_id(holder, "holder")
        new_ids = {waiter, holder} - self._touching.keys()
        if len(self._touching) + len(new_ids) > self.nodes_max:
            raise WaitGraphFull(f"the wait-for graph holds {len(self._touching)} ids, and "
                                f"{waiter} waiting for {holder} would pass nodes_max "
                                f"({self.nodes_max})")
        if self._waits + 1 > self.edges_max:
            raise WaitGraphFull(f"the wait-for graph holds {self._waits} waits, and {waiter} "
                                f"waiting for {holder} would pass edges_max ({self.edges_max})")
        holders = self._out.setdefault(waiter, {})
        if holder not in holders:
            holders[holder] = 0
            self._in.setdefault(holder, set()).add(waiter)
            for node in {waiter, holder}:
                self._touching[node] = self._touching.get(node, 0) + 1
        holders[holder] += 1
        self._waits += 1

    def remove_wait(self, waiter: str, holder: str) -> bool:
        """Forget one recording of ``waiter`` waiting for ``holder``; False if there is none."""
        holders = self._out.get(waiter)
        if holders is None or holder not in holders:
            return False
        self._waits -= 1
        holders[holder] -= 1
        if holders[holder] == 0:
            self._drop_edge(waiter, holder)
        return True

    def clear(self, node: str) -> int:
        """Forget every wait of or for ``node`` (it ended); the number of waits removed."""
        removed = 0
        for holder in list(self._out.get(node, {})):
            removed += self._out[node][holder]
            self._drop_edge(node, holder)
        for waiter in list(self._in.get(node, set())):
            removed += self._out[waiter][node]
            self._drop_edge(waiter, node)
        self._waits -= removed
        return removed

    def _drop_edge(self, waiter: str, holder: str) -> None:
        del self._out[waiter][holder]
        if not self._out[waiter]:
            del self._out[waiter]
        self._in[holder].discard(waiter)
        if not self._in[holder]:
            del self._in[holder]
        for node in {waiter, holder}:
            self._touching[node] -= 1
            if not self._touching[node]:
                del self._touching[node]

    def find_cycle(self) -> list[str] | None:
        """A cycle of waits, or None.

        Deterministic: a depth-first search from the smallest id, following
        holders in id order; the first cycle met is returned starting at its
        smallest id (``["a", "b"]``: a waits for b waits for a).
        """
        finished: set[str] = set()
        for start in sorted(self._touching):
            if start in finished:
                continue
            path = [start]
            on_path = {start: 0}
            stack = [iter(self.holders_of(start))]
            while stack:
                node = next(stack[-1], None)
                if node is None:
                    stack.pop()
                    done = path.pop()
                    del on_path[done]
                    finished.add(done)
                elif node in on_path:
                    cycle = path[on_path[node]:]
                    first = cycle.index(min(cycle))
                    return cycle[first:] + cycle[:first]
                elif node not in finished:
                    on_path[node] = len(path)
                    path.append(node)
                    stack.append(iter(self.holders_of(node)))
        return None

    def would_deadlock(self, waiter: str, holder: str) -> list[str] | None:
        """The cycle that ``waiter`` waiting for ``holder`` would close, starting at
        ``waiter`` (the shortest such, ties in id order), or None when it closes none."""
        _check_id(waiter, "waiter")
        _check_id(holder, "holder")
        if waiter == holder:
            return [waiter]
        # Breadth first from the holder: a path back to the waiter closes the cycle.
        came_from: dict[str, str] = {holder: holder}
        queue = deque([holder])
        while queue:
            node = queue.popleft()
            for following in self.holders_of(node):
                if following in came_from:
                    continue
                came_from[following] = node
                if following == waiter:
                    path = [node]
                    while path[-1] != holder:
                        path.append(came_from[path[-1]])
                    return [waiter, *reversed(path)]
                queue.append(following)
        return None


class WaitRegistry:
    """In-process coordinator of waits over a ``WaitForGraph`` (see the module docstring)."""

    def __init__(self, graph: WaitForGraph | None = None) -> None:
        self.graph = graph if graph is not None else WaitForGraph()
        self.refused = 0
        """Waits refused because they would have closed a cycle."""
        self.timed_out = 0
        """Waits ended by their timeout."""

    @asynccontextmanager
    async def waiting(self, waiter: str, holder: str, *,
                      timeout_s: float) -> AsyncIterator[None]:
        """Record ``waiter`` waiting for ``holder`` while the block runs, at most
        ``timeout_s`` (then ``WaitTimeout``); ``DeadlockError`` at once, nothing
        recorded, when the wait would close a cycle."""
        _check_timeout(timeout_s)
        cycle = self.graph.would_deadlock(waiter, holder)
        if cycle is not None:
            self.refused += 1
            raise DeadlockError(cycle, waiter)
        self.graph.add_wait(waiter, holder)
        try:
            with anyio.move_on_after(timeout_s) as scope:
                yield
        finally:
            self.graph.remove_wait(waiter, holder)
        if scope.cancelled_caught:
            self.timed_out += 1
            raise WaitTimeout(f"{holder} (waited for by {waiter})", timeout_s)


async def bounded_wait(what: str,
                       event_or_predicate: anyio.Event | Callable[[], Awaitable[bool] | bool],
                       timeout_s: float, *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
    """Wait until the event is set (or the predicate holds), at most ``timeout_s``.

    A predicate is called at once and then every ``poll_interval_s``; it may be a
    coroutine function or a plain one. ``WaitTimeout`` naming ``what`` when the
    time is up; ``ConfigError`` for a timeout or interval out of range.
    """
    if not isinstance(what, str) or not what.strip():
        raise WaitError(f"what a wait is for ({what!r}) must be non-empty text")
    _check_timeout(timeout_s)
    if (isinstance(poll_interval_s, bool) or not isinstance(poll_interval_s, int | float)
            or not math.isfinite(poll_interval_s)
            or not 0 < poll_interval_s <= WAIT_TIMEOUT_S_MAX):
        raise ConfigError(f"poll_interval_s ({poll_interval_s!r}) must be more than 0 and at "
                          f"most {WAIT_TIMEOUT_S_MAX:g} seconds")
    if isinstance(event_or_predicate, anyio.Event):
        with anyio.move_on_after(timeout_s) as scope:
            await event_or_predicate.wait()
    elif callable(event_or_predicate):
        predicate = event_or_predicate
        with anyio.move_on_after(timeout_s) as scope:
            while not await _holds(predicate):
                await anyio.sleep(poll_interval_s)
    else:
        raise WaitError(f"waiting for {what}: expected an anyio.Event or a predicate, not "
                        f"{type(event_or_predicate).__name__}")
    if scope.cancelled_caught:
        raise WaitTimeout(what, timeout_s)


async def _holds(predicate: Callable[[], Awaitable[bool] | bool]) -> bool:
    result = predicate()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def _check_id(value: object, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise WaitError(f"a {what} id ({value!r}) must be non-empty text")
    if len(value) > NODE_ID_CHARS_MAX:
        raise WaitError(f"{what} id {value[:40]!r}... has {len(value)} characters, more than "
                        f"{NODE_ID_CHARS_MAX}")


def _check_timeout(timeout_s: object) -> None:
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s) or not 0 < timeout_s <= WAIT_TIMEOUT_S_MAX):
        raise ConfigError(f"a wait's timeout_s ({timeout_s!r}) must be more than 0 and at "
                          f"most {WAIT_TIMEOUT_S_MAX:g} seconds")
