"""Synthetic histories with a known answer, for tests and the benchmark.

How this works: ``ReferenceKV`` is a plain dict-based store with the semantics
``KVModel`` specifies, written separately from it so that the two check each
other. ``synthesize`` runs several clients against it: each client issues one
operation at a time with a random latency, and each operation takes effect at a
random instant inside its interval, in the order of those instants. The
resulting history is linearizable by construction (the instants are a witness).
Some operations can lose their answer (unknown outcome); of those, a fraction
never took effect at all. Everything random comes from the ``Random`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any

from sim.linearizability.history import Operation, Outcome
from sim.linearizability.models import DeleteVersioning

__all__ = ["ReferenceKV", "SynthSettings", "synthesize"]


class ReferenceKV:
    """An in-memory KV store: ``apply(op, key, args)`` returns what a client would see."""

    def __init__(self, delete_versioning: DeleteVersioning = DeleteVersioning.KEEP) -> None:
        self.delete_versioning = delete_versioning
        self.values: dict[str, Any] = {}  # present keys only
        self.versions: dict[str, int] = {}

    def apply(self, op: str, key: str, args: tuple[Any, ...]) -> Any:
        """Execute one operation; raise ``ValueError`` for an unknown one."""
        version = self.versions.get(key, 0)
        if op == "get":
            return (self.values.get(key), version)
        if op == "put":
            self._write(key, args[0], version + 1)
            return version + 1
        if op == "cas":
            if version != args[1]:
                return (False, version)
            self._write(key, args[0], version + 1)
            return (True, version + 1)
        if op == "delete":
            if key not in self.values:
                return False
            del self.values[key]
            keep = self.delete_versioning is DeleteVersioning.KEEP
            self.versions[key] = version + 1 if keep else 0
            return True
        raise ValueError(f"ReferenceKV has no operation {op!r}")

    def _write(self, key: str, value: Any, version: int) -> None:
        self.values[key] = value
        self.versions[key] = version


@dataclass(frozen=True, slots=True)
class SynthSettings:
    """The shape of a synthetic history."""

    operations: int = 2000
    keys: int = 20
    clients: int = 5
    #: fraction of operations whose answer is lost (recorded with unknown outcome).
    unknown_fraction: float = 0.0
    #: of the operations with a lost answer, the fraction that never took effect.
    never_applied_fraction: float = 0.5
    #: mix of get, put, cas, delete (weights).
    weights: tuple[int, int, int, int] = (40, 30, 20, 10)
    latency_s: tuple[float, float] = (0.001, 0.010)
    think_s: tuple[float, float] = (0.0, 0.002)
    delete_versioning: DeleteVersioning = DeleteVersioning.KEEP


_KINDS = ("get", "put", "cas", "delete")


def synthesize(rng: Random, settings: SynthSettings = SynthSettings()) -> list[Operation]:
    """A linearizable history of concurrent clients, in invocation order."""
    clock = [0.0] * settings.clients
    planned: list[tuple[float, int, str, float, float]] = []  # (instant, n, client, start, end)
    for n in range(settings.operations):
        who = rng.randrange(settings.clients)
        start = clock[who] + rng.uniform(*settings.think_s)
        end = start + rng.uniform(*settings.latency_s)
        clock[who] = end
        planned.append((rng.uniform(start, end), n, f"c{who}", start, end))
    planned.sort()
    store = ReferenceKV(settings.delete_versioning)
    ops: list[Operation] = []
    for _, n, client, start, end in planned:
        key = f"k{rng.randrange(settings.keys)}"
        kind = rng.choices(_KINDS, weights=settings.weights)[0]
        args: tuple[Any, ...] = ()
        if kind == "put":
            args = (f"v{n}",)
        elif kind == "cas":
            # Aim at the current version half the time so that some cas succeed.
            current = store.versions.get(key, 0)
            args = (f"v{n}", current if rng.random() < 0.5 else max(0, current - 1))
        if rng.random() < settings.unknown_fraction:
            if rng.random() >= settings.never_applied_fraction:
                store.apply(kind, key, args)
            ops.append(Operation(client, kind, key, args, start, None, None, Outcome.UNKNOWN))
        else:
            ops.append(Operation(client, kind, key, args, start, end,
                                 store.apply(kind, key, args)))
    ops.sort(key=lambda op: op.invoke)
    return ops
