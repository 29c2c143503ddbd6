"""A linearizability checker for histories of client operations on the replicated store.

How this works: clients record each request's invocation and completion times
and its result in a ``History`` (or the simulator does, on virtual time). ``check``
splits the history by key and, for each key, searches for an order of the
operations that respects real time (an operation that completed before another
was invoked comes first) and in which every result is the one a sequential
``Model`` of the store produces. The search is Wing & Gong's with Lowe's
just-in-time ordering and memoization of (linearized set, model state), see
``sim.linearizability.search``. Operations whose outcome is unknown (timeouts,
crashes) may take effect at any time after their invocation, or never.

    from sim.linearizability import History, check
    history = History()
    h = history.invoke("c1", "put", "k", (b"v",), at=0.0)
    history.complete(h, 1, at=0.5)
    assert check(history).linearizable

From the shell, on a saved history: ``python -m sim.linearizability HISTORY.json``
(exit 0 linearizable, 1 not, 2 undecided at the time limit, 3 unreadable input).

Modules: ``history`` (recording, JSON), ``models`` (``KVModel``, ``RegisterModel``
and the ``Model`` protocol), ``search`` (one key's search), ``checker`` (``check``
and its report), ``synth`` (synthetic histories with a known answer, for tests
and ``scripts/bench_linearizability.py``).
"""

from sim.linearizability.checker import CheckStats, Failure, Placement, Result, check
from sim.linearizability.history import (
    FORMAT,
    FrozenMap,
    History,
    Operation,
    OpHandle,
    Outcome,
    format_operation,
    freeze,
)
from sim.linearizability.models import DeleteVersioning, KVModel, KVState, Model, RegisterModel

__all__ = [
    "FORMAT",
    "CheckStats",
    "DeleteVersioning",
    "Failure",
    "FrozenMap",
    "History",
    "KVModel",
    "KVState",
    "Model",
    "OpHandle",
    "Operation",
    "Outcome",
    "Placement",
    "RegisterModel",
    "Result",
    "check",
    "format_operation",
    "freeze",
]
