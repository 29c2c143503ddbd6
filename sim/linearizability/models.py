"""Sequential specifications: what one key of the store does when operations run one at a time.

How this works: a ``Model`` describes one partition of the state (one key), since
the checker splits a history by key and every operation touches a single key. It
gives an initial state and a ``step`` that applies one operation to a state and
says whether the result the client saw is the one the specification produces.
States must be hashable and compare by value: the search memoizes
(linearized operations, state) pairs. For an operation whose outcome is unknown,
``step`` ignores the result and returns the state the operation would leave
(for a ``cas``, the state decides whether it would have succeeded).

``KVModel`` is the Raft-replicated store; ``RegisterModel`` is a plain
read/write/compare-and-set register, for tests and as a template for new models
(a lock with fencing tokens, a lease).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from sim.linearizability.history import Operation, format_operation, format_value

__all__ = [
    "UNREAD",
    "DeleteVersioning",
    "KVModel",
    "KVState",
    "Model",
    "RegisterModel",
]

S = TypeVar("S", bound=Hashable)


class Model(Protocol[S]):
    """A sequential specification of one partition (one key) of a shared object."""

    def init(self) -> S:
        """The state of a partition that no operation has touched yet."""
        ...

    def validate(self, op: Operation) -> None:
        """Raise ``ValueError`` naming the operation if the model cannot apply it."""
        ...

    def step(self, state: S, op: Operation) -> tuple[bool, S]:
        """Apply ``op`` to ``state``: (does its result match the specification, next state).

        ``op`` has frozen ``args`` and ``result``. When ``op.unknown`` the result
        is absent, the first element must be True and the next state may depend
        only on ``state``, ``op.op`` and ``op.args``.
        """
        ...

    def is_read_only(self, op: Operation) -> bool:
        """True if ``op`` never changes the state (an unknown read is then dropped)."""
        ...

    def canonical(self, ops: Sequence[Operation]) -> list[Operation]:
        """One key's operations with values no result can tell apart made equal.

        Optional speed-up (return ``list(ops)`` when unsure): the search merges
        equal states and treats unknown operations with equal ``op`` and
        ``args`` as interchangeable. Only ``args`` may change, and only so that
        every result in ``ops`` fits exactly the orders it fitted before.
        """
        ...

    def describe(self, state: S) -> str:
        """The state, for humans."""
        ...

    def explain(self, state: S, op: Operation) -> str:
        """Why ``op``'s result does or does not fit ``state``, for humans."""
        ...


def _same(expected: Any, actual: Any) -> bool:
    """Equality that also tells ``True`` from ``1`` and ``1`` from ``1.0``.

    Python's ``==`` says ``True == 1``, which would let a boolean answer pass for
    a version number; a checker must not be that forgiving.
    """
    if type(expected) is not type(actual):
        return False
    if isinstance(expected, tuple):
        return len(expected) == len(actual) and all(
            _same(e, a) for e, a in zip(expected, actual, strict=True))
    return bool(expected == actual)


class _Unread:
    """The stand-in for every written value that no result ever shows."""

    _instance: _Unread | None = None

    def __new__(cls) -> _Unread:  # one instance, so pickling or copying keeps identity
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<a value no read returned>"


#: What ``canonical`` writes in place of values that no completed read returned:
#: such values are indistinguishable to every observer, so one stand-in serves.
UNREAD = _Unread()


def _replace_unread(ops: Sequence[Operation], observed: set[Any],
                    positions: dict[str, int]) -> list[Operation]:
    """Replace ``args[positions[op.op]]`` by ``UNREAD`` where that value is not ``observed``."""
    rewritten = []
    for op in ops:
        at = positions.get(op.op)
        if at is not None and op.args[at] not in observed:
            args = (*op.args[:at], UNREAD, *op.args[at + 1:])
            op = dataclasses.replace(op, args=args)
        rewritten.append(op)
    return rewritten


def _require_args(op: Operation, count: int, names: str) -> None:
    if len(op.args) != count:
        raise ValueError(f"{format_operation(op)}: {op.op} takes {count} argument(s) after "
                         f"the key ({names}), got {len(op.args)}")


# -- the replicated KV store ---------------------------------------------------------


class DeleteVersioning(enum.Enum):
    """What a successful delete does to a key's version."""

    #: A delete is a write like any other: the version goes up by one and the key
    #: keeps it while absent (``get`` answers ``(None, version)``), and the next
    #: put continues from there. Versions of a key never repeat, so a ``cas``
    #: cannot succeed against a deleted-and-recreated key by accident (no ABA).
    #: Version 0 means "never written".
    KEEP = "keep"
    #: A delete forgets the key: the version goes back to 0, so 0 always means
    #: absent and ``cas(expect_version=0)`` means "create if absent" (etcd's
    #: per-key ``version`` behaves this way).
    RESET = "reset"


class KVState(NamedTuple):
    """One key of the store."""

    present: bool
    value: Hashable
    version: int


_ABSENT = KVState(False, None, 0)
_KV_OPS = {"get": (0, "none"), "put": (1, "value"), "delete": (0, "none"),
           "cas": (2, "value, expect_version")}


@dataclass(frozen=True, slots=True)
class KVModel:
    """One key of the Raft-replicated KV store.

    Operations (``args`` after the key, and the result the client sees):

    - ``get()`` -> ``(value or None, version)``
    - ``put(value)`` -> version after the write
    - ``delete()`` -> ``True`` if the key existed (a delete of an absent key
      changes nothing)
    - ``cas(value, expect_version)`` -> ``(True, version after the write)`` if
      the current version equals ``expect_version``, else ``(False, current
      version)`` and nothing changes

    Every successful write (put, successful cas, delete of a present key) moves
    the key's version up by one; ``delete_versioning`` says what a delete does
    (``KEEP``, the default: keeps counting; ``RESET``: back to 0).
    """

    delete_versioning: DeleteVersioning = DeleteVersioning.KEEP

    def init(self) -> KVState:
        """An absent key at version 0."""
        return _ABSENT

    def validate(self, op: Operation) -> None:
        """Check the operation's name and argument count."""
        shape = _KV_OPS.get(op.op)
        if shape is None:
            raise ValueError(f"{format_operation(op)}: KVModel knows get, put, delete and cas, "
                             f"not {op.op!r}")
        _require_args(op, *shape)
        if op.op == "cas" and type(op.args[1]) is not int:
            raise ValueError(f"{format_operation(op)}: expect_version {op.args[1]!r} "
                             "must be an int")

    def step(self, state: KVState, op: Operation) -> tuple[bool, KVState]:
        """Apply one operation; see the class docstring for results."""
        expected, after = self._apply(state, op)
        return op.unknown or _same(expected, op.result), after

    def _apply(self, state: KVState, op: Operation) -> tuple[Any, KVState]:
        kind = op.op
        if kind == "get":
            return (state.value if state.present else None, state.version), state
        if kind == "put":
            after = KVState(True, op.args[0], state.version + 1)
            return after.version, after
        if kind == "cas":
            if state.version != op.args[1]:
                return (False, state.version), state
            after = KVState(True, op.args[0], state.version + 1)
            return (True, after.version), after
        if kind == "delete":
            if not state.present:
                return False, state
            if self.delete_versioning is DeleteVersioning.RESET:
                return True, _ABSENT
            return True, KVState(False, None, state.version + 1)
        raise ValueError(f"KVModel cannot apply {op.op!r}")  # validate() rules this out

    def is_read_only(self, op: Operation) -> bool:
        """Only ``get`` leaves the state alone."""
        return op.op == "get"

    def canonical(self, ops: Sequence[Operation]) -> list[Operation]:
        """Written values that no completed ``get`` returned become ``UNREAD``.

        Only a get's result shows a value (put, cas and delete answer with
        versions and flags), so two such values never make a difference.
        """
        observed = {op.result[0] for op in ops if op.op == "get" and not op.unknown
                    and isinstance(op.result, tuple) and op.result}
        return _replace_unread(ops, observed, {"put": 0, "cas": 0})

    def describe(self, state: KVState) -> str:
        """``'v' at version 3`` or ``absent at version 4``."""
        if state.present:
            return f"{format_value(state.value)} at version {state.version}"
        return f"absent at version {state.version}"

    def explain(self, state: KVState, op: Operation) -> str:
        """What the operation would have returned in ``state``."""
        expected, _ = self._apply(state, op)
        return _explain(f"the key is {self.describe(state)}", expected, op)


def _explain(context: str, expected: Any, op: Operation) -> str:
    """``context`` says what the state is, as a clause: "the key is 'v' at version 2"."""
    if op.unknown:
        return f"outcome unknown; {context}"
    if _same(expected, op.result):
        return f"returned {format_value(op.result)}, which fits: {context}"
    return (f"returned {format_value(op.result)}, but {context}, where it would return "
            f"{format_value(expected)}")


# -- a register, for tests and as a template ------------------------------------------

_REGISTER_OPS = {"read": (0, "none"), "write": (1, "value"), "cas": (2, "expected, new")}


@dataclass(frozen=True, slots=True)
class RegisterModel:
    """A register per key: ``read()`` -> value, ``write(value)``, ``cas(expected, new)`` -> bool.

    The result of ``write`` is not checked (clients answer it with ``None``,
    ``"ok"`` or nothing useful); an unwritten register holds ``initial``.
    """

    initial: Hashable = None

    def init(self) -> Hashable:
        """The initial value."""
        return self.initial

    def validate(self, op: Operation) -> None:
        """Check the operation's name and argument count."""
        shape = _REGISTER_OPS.get(op.op)
        if shape is None:
            raise ValueError(f"{format_operation(op)}: RegisterModel knows read, write and "
                             f"cas, not {op.op!r}")
        _require_args(op, *shape)

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Apply one operation."""
        kind = op.op
        if kind == "write":
            return True, op.args[0]
        if kind == "read":
            return op.unknown or _same(state, op.result), state
        swapped = _same(state, op.args[0])
        return op.unknown or _same(swapped, op.result), op.args[1] if swapped else state

    def is_read_only(self, op: Operation) -> bool:
        """Only ``read`` leaves the state alone."""
        return op.op == "read"

    def canonical(self, ops: Sequence[Operation]) -> list[Operation]:
        """Written values that no read returned and no cas compares with become ``UNREAD``."""
        observed = {op.result for op in ops if op.op == "read" and not op.unknown}
        observed |= {op.args[0] for op in ops if op.op == "cas"}
        observed.add(self.initial)  # the initial state is not rewritten, so keep it apart
        return _replace_unread(ops, observed, {"write": 0, "cas": 1})

    def describe(self, state: Hashable) -> str:
        """The register's value."""
        return f"the register holds {format_value(state)}"

    def explain(self, state: Hashable, op: Operation) -> str:
        """What the operation would have returned in ``state``."""
        if op.op == "write":
            return f"a write always fits; {self.describe(state)}"
        expected = state if op.op == "read" else _same(state, op.args[0])
        return _explain(self.describe(state), expected, op)
