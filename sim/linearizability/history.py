"""Recorded client operations: the input of the linearizability checker.

How this works: a client calls ``History.invoke`` just before it sends a request
and ``History.complete`` when the answer arrives, each with a timestamp from one
clock shared by every client (virtual time in the simulator; ``time.monotonic``,
which is system-wide on Linux, for real processes). A request whose answer never
came (timeout, crashed client, lost connection after sending) is closed with
``History.unknown``: it may or may not have taken effect, at any time after its
invocation. A request that certainly failed before it was sent (a redirect, a
refused connection) should not be recorded at all.

Histories round-trip through JSON (``to_json`` / ``from_json``) so that a
real-process test can write one to a file and the checker can read it offline:
bytes become ``{"$bytes": "<base64>"}``, tuples become lists, and the checker
compares values after ``freeze`` (lists to tuples, dicts to ``FrozenMap``), so a
value survives the trip unchanged in meaning.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NewType

__all__ = [
    "FORMAT",
    "FrozenMap",
    "History",
    "OpHandle",
    "Operation",
    "Outcome",
    "format_operation",
    "format_value",
    "freeze",
]

#: The ``format`` tag of a saved history; ``from_json`` refuses anything else.
FORMAT = "agentmesh.history/1"
_VALUE_REPR_CHARS_MAX = 48  # keeps explanations readable when values are large blobs


class Outcome(enum.Enum):
    """What the client knows about an operation's effect."""

    #: The answer arrived: the operation took effect between invoke and complete.
    OK = "ok"
    #: No answer: it took effect at some time after invoke, or never.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request as the client saw it.

    ``args`` are the request's arguments after the key (``put``: ``(value,)``;
    ``cas``: ``(value, expect_version)``). ``complete is None`` or
    ``outcome is Outcome.UNKNOWN`` means the answer never came; ``result`` is
    then ignored.
    """

    client: str
    op: str
    key: str
    args: tuple[Any, ...]
    invoke: float
    complete: float | None
    result: Any | None
    outcome: Outcome = Outcome.OK

    @property
    def unknown(self) -> bool:
        """True when the operation may or may not have taken effect."""
        return self.complete is None or self.outcome is Outcome.UNKNOWN

    def frozen(self) -> Operation:
        """This operation with hashable, canonical ``args`` and ``result`` (see ``freeze``)."""
        if self.unknown:
            return dataclasses.replace(self, args=freeze(self.args), complete=None, result=None,
                                       outcome=Outcome.UNKNOWN)
        return dataclasses.replace(self, args=freeze(self.args), result=freeze(self.result))


@dataclass(frozen=True, slots=True)
class FrozenMap:
    """A dict made hashable: its items sorted by key."""

    items: tuple[tuple[str, Hashable], ...]

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self.items) + "}"


def freeze(value: Any) -> Any:
    """Return a hashable value equal in meaning: lists to tuples, dicts to ``FrozenMap``.

    Needed because a JSON round trip turns tuples into lists, and because the
    checker memoizes model states, which must be hashable.
    """
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, dict):
        return FrozenMap(tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, set | frozenset):
        return frozenset(freeze(item) for item in value)
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"value {value!r} of type {type(value).__name__} is not hashable "
                        "and has no frozen form") from None
    return value


def format_value(value: Any) -> str:
    """``repr`` of a value, shortened to stay readable in explanations."""
    text = repr(value)
    if len(text) > _VALUE_REPR_CHARS_MAX:
        text = text[:_VALUE_REPR_CHARS_MAX - 3] + "..."
    return text


def format_operation(op: Operation, index: int | None = None) -> str:
    """One line for humans: ``#3 c1 [1.000, 2.000] put('k', 'v') -> 1``."""
    end = "?" if op.unknown or op.complete is None else f"{op.complete:.6g}"
    args = ", ".join(format_value(a) for a in (op.key, *op.args))
    result = "? (outcome unknown)" if op.unknown else format_value(op.result)
    prefix = "" if index is None else f"#{index} "
    return f"{prefix}{op.client} [{op.invoke:.6g}, {end}] {op.op}({args}) -> {result}"


OpHandle = NewType("OpHandle", int)


class History:
    """A recorder of client operations, and a saved history read back.

    Not thread-safe: record from one thread (an event loop, or the simulator).
    Operations still open when ``operations`` is read count as unknown, which is
    what they are when a test stops waiting for them.
    """

    def __init__(self, operations: Iterable[Operation] = (),
                 meta: Mapping[str, Any] | None = None) -> None:
        self._ops: list[Operation] = list(operations)
        self._open: set[int] = set()
        #: Free-form JSON-able facts about the run (seed, scenario, cluster size).
        self.meta: dict[str, Any] = dict(meta or {})

    def __len__(self) -> int:
        return len(self._ops)

    def invoke(self, client: str, op: str, key: str, args: tuple[Any, ...],
               at: float) -> OpHandle:
        """Record that ``client`` sends ``op(key, *args)`` at time ``at``; return its handle."""
        if not math.isfinite(at):
            raise ValueError(f"invoke time {at!r} of {client} {op}({key!r}) must be finite")
        self._ops.append(Operation(client, op, key, tuple(args), at, None, None,
                                   Outcome.UNKNOWN))
        handle = len(self._ops) - 1
        self._open.add(handle)
        return OpHandle(handle)

    def complete(self, handle: OpHandle, result: Any, at: float) -> None:
        """Record that the answer to ``handle`` arrived at time ``at`` carrying ``result``."""
        op = self._open_operation(handle)
        if not (math.isfinite(at) and at >= op.invoke):
            raise ValueError(f"completion time {at!r} of {format_operation(op, handle)} "
                             f"must be finite and not before its invoke time {op.invoke!r}")
        self._open.discard(handle)
        self._ops[handle] = dataclasses.replace(op, complete=at, result=result,
                                                outcome=Outcome.OK)

    def unknown(self, handle: OpHandle) -> None:
        """Record that the answer to ``handle`` will never come (timeout, crash)."""
        self._open_operation(handle)
        self._open.discard(handle)

    def _open_operation(self, handle: OpHandle) -> Operation:
        if handle not in self._open:
            state = "unknown handle" if not 0 <= handle < len(self._ops) else "already closed"
            raise ValueError(f"operation handle {handle} is {state}")
        return self._ops[handle]

    @property
    def operations(self) -> tuple[Operation, ...]:
        """Every recorded operation, in invocation-recording order."""
        return tuple(self._ops)

    def to_json(self, *, indent: int | None = None) -> str:
        """The history as a JSON document (see ``FORMAT``)."""
        document = {
            "format": FORMAT,
            "meta": _encode(self.meta),
            "operations": [_op_to_json(op) for op in self._ops],
        }
        return json.dumps(document, indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> History:
        """Read a history written by ``to_json``."""
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document)
            raise ValueError(f"not an agentmesh history: format is {found!r}, "
                             f"expected {FORMAT!r}")
        meta = _decode(document.get("meta", {}))
        return cls((_op_from_json(i, raw) for i, raw in enumerate(document["operations"])),
                   meta=meta if isinstance(meta, dict) else {})

    def save(self, path: str) -> None:
        """Write ``to_json()`` to the file at ``path``."""
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: str) -> History:
        """Read a history saved by ``save``."""
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())


def _op_to_json(op: Operation) -> dict[str, Any]:
    unknown = op.unknown
    return {
        "client": op.client,
        "op": op.op,
        "key": op.key,
        "args": _encode(list(op.args)),
        "invoke": op.invoke,
        "complete": None if unknown else op.complete,
        "result": None if unknown else _encode(op.result),
        "outcome": Outcome.UNKNOWN.value if unknown else Outcome.OK.value,
    }


def _op_from_json(index: int, raw: Any) -> Operation:
    try:
        outcome = Outcome(raw.get("outcome", Outcome.OK.value))
        complete = raw["complete"]
        op = Operation(
            client=str(raw["client"]), op=str(raw["op"]), key=str(raw["key"]),
            args=tuple(_decode(raw["args"])), invoke=float(raw["invoke"]),
            complete=None if complete is None else float(complete),
            result=_decode(raw.get("result")), outcome=outcome,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"operation {index} of the history is malformed ({exc!r}): "
                         f"{raw!r}") from None
    if op.complete is not None and op.complete < op.invoke:
        raise ValueError(f"operation {index} completes at {op.complete!r}, "
                         f"before its invocation at {op.invoke!r}")
    return op


def _encode(value: Any) -> Any:
    """A JSON-able form of a value: bytes tagged, tuples as lists, maps as objects."""
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    if isinstance(value, FrozenMap):
        return {k: _encode(v) for k, v in value.items}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise TypeError(f"value {value!r} of type {type(value).__name__} cannot be saved in a "
                    "history (use bytes, str, numbers, bools, None, lists or dicts)")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value
