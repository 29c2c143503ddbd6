"""The task ledger: one record per task in the Raft KV store, changed only by CAS.

How this works
--------------
A task lives under the KV key ``task/<task_id>`` as the canonical msgpack bytes of
a ``TaskRecord``. Every change is a pure transition: given the record as read and
the key's KV version, it returns a ``Transition`` (the ``CompareAndSet`` to
propose, expecting exactly that version, and the record it writes) or a
``Refusal`` saying why the change is not allowed. Because each write expects the
version it read, two writers racing from the same version cannot both succeed:
the first bumps the version and the second gets ``cas_failed``, rereads, and its
transition is then refused. That is what makes the award exactly-one-per-epoch:
``award`` is only allowed from ``open`` at the record's epoch.

States and epochs::

    create -> open(epoch 1) --award--> awarded(e) --complete--> done
                  ^                        |
                  +---- open(e+1) <--------+ fail_attempt / reopen
                                           +-- after max_attempts --> failed
    open or awarded --cancel--> cancelled

``attempts`` counts attempts that ended without a result (failures, lost
contractors, auctions given up); when it reaches ``max_attempts`` the task is
``failed`` with every reason kept. A result is accepted only from the awarded
contractor at the current epoch (fencing: a result of an older epoch is refused),
and only once, since ``done`` is final.

The record's key is not attached to the contractor's lease: the lease expiring
must reopen the task, not delete it. The lease id is kept in the record so the
driver can match lease expiries to tasks.

An index of the tasks not yet final, ``unfinished/<task_id>`` (empty values), is
kept in the same writes (``CompareAndSetWithWrites``): ``create`` adds the key
and a transition to a final state removes it, together with the task's
``owner/<task_id>`` key (the node managing it, which a final task no longer
needs). So the index can never disagree with the records, and a driver scanning
for work reads the unfinished tasks only, not every task the mesh ever ran.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from consensus.kvstore.commands import CompareAndSet, CompareAndSetWithWrites
from mesh.errors import MeshError

__all__ = [
    "ATTEMPTS_MAX",
    "BIDS_MAX",
    "INPUT_BYTES_MAX",
    "KEY_PREFIX",
    "OWNER_PREFIX",
    "RECORD_FORMAT",
    "UNFINISHED_PREFIX",
    "BidRecord",
    "LedgerError",
    "Refusal",
    "RefusalReason",
    "TaskRecord",
    "TaskState",
    "Transition",
    "award",
    "cancel",
    "complete",
    "create",
    "decode_record",
    "encode_record",
    "fail_attempt",
    "reopen",
    "task_key",
]

KEY_PREFIX = "task/"
"""Prefix of every task ledger key in the KV store."""
UNFINISHED_PREFIX = "unfinished/"
"""Prefix of the index of tasks not yet final (see the module docstring)."""
OWNER_PREFIX = "owner/"
"""Prefix of the key naming the node that manages a task (removed once final)."""
RECORD_FORMAT = 3
"""Version of the record byte layout written. Format 2 added the award's bids,
format 3 the agent that produced the result; format 1 and 2 records are still
read; any other is refused."""
AGENT_CHARS_MAX = 128
TASK_ID_CHARS_MAX = 128
CAPABILITY_CHARS_MAX = 128
INPUT_BYTES_MAX = 256 * 1024
"""Largest task input kept in the ledger."""
RESULT_BYTES_MAX = 1024 * 1024
"""Largest inline result kept in the ledger; larger ones are kept as a digest."""
DIGEST_BYTES_MAX = 64
LOCATION_CHARS_MAX = 1024
BIDS_MAX = 64
"""Most bids kept with an award (a manager invites at most this many by default)."""
REASON_CHARS_MAX = 256
"""Failure reasons are cut to this many characters."""
ATTEMPTS_MAX = 100
"""Largest ``max_attempts`` a task may have."""
NODE_ID_BYTES_MAX = 64
INT_MAX = 2**63 - 1


class LedgerError(MeshError):
    """Bytes or values that do not make a well-formed task record."""


class TaskState(enum.Enum):
    """Where a task is. Its value is the stable byte and JSON spelling."""

    OPEN = "open"
    """Waiting for an award at ``epoch``."""
    AWARDED = "awarded"
    """Awarded at ``epoch`` to ``contractor``; running."""
    DONE = "done"
    """Finished with a result (final)."""
    FAILED = "failed"
    """Gave up after ``max_attempts`` attempts (final)."""
    CANCELLED = "cancelled"
    """Cancelled by its originator (final)."""


FINAL_STATES = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})
_STATE_BY_VALUE = {state.value: state for state in TaskState}


@dataclass(frozen=True, slots=True)
class BidRecord:
    """One bid of the auction that made the latest award, as the ledger keeps it."""

    node_id: bytes
    cost: float
    duration_s: float
    load: float
    confidence: float

    def __post_init__(self) -> None:
        _bytes(self.node_id, "bid node_id", NODE_ID_BYTES_MAX)
        for name in ("cost", "duration_s", "load", "confidence"):
            value = getattr(self, name)
            if type(value) is not float or not math.isfinite(value) or value < 0:
                raise LedgerError(f"bid {name} must be a finite float >= 0, got {_show(value)}")


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task as the ledger holds it. Construction checks every field."""

    task_id: str
    capability: str
    input: bytes
    state: TaskState = TaskState.OPEN
    epoch: int = 1
    contractor: bytes | None = None
    """The awarded node while ``awarded`` (and the one that finished it when ``done``)."""
    lease_id: int | None = None
    """The KV lease the contractor keeps alive while ``awarded``."""
    attempts: int = 0
    """Attempts that ended without a result."""
    max_attempts: int = 3
    result: bytes | None = None
    result_digest: bytes | None = None
    result_location: str | None = None
    failure_reasons: tuple[str, ...] = field(default=())
    bids: tuple[BidRecord, ...] = field(default=())
    """The bids of the auction that made the latest award, best first (at most
    ``BIDS_MAX``); empty before the first award."""
    agent: str | None = None
    """The name of the agent that produced the result (on the contractor's node)."""

    def __post_init__(self) -> None:
        _text(self.task_id, "task_id", TASK_ID_CHARS_MAX)
        _text(self.capability, "capability", CAPABILITY_CHARS_MAX)
        _bytes(self.input, "input", INPUT_BYTES_MAX, empty_ok=True)
        if not isinstance(self.state, TaskState):
            raise LedgerError(f"state must be a TaskState, got {_show(self.state)}")
        _int(self.epoch, "epoch", 1)
        _int(self.max_attempts, "max_attempts", 1, ATTEMPTS_MAX)
        _int(self.attempts, "attempts", 0, self.max_attempts)
        if self.contractor is not None:
            _bytes(self.contractor, "contractor", NODE_ID_BYTES_MAX)
        if self.lease_id is not None:
            _int(self.lease_id, "lease_id", 1)
        if self.result is not None:
            _bytes(self.result, "result", RESULT_BYTES_MAX, empty_ok=True)
        if self.result_digest is not None:
            _bytes(self.result_digest, "result_digest", DIGEST_BYTES_MAX)
        if self.result_location is not None:
            _text(self.result_location, "result_location", LOCATION_CHARS_MAX)
        if type(self.failure_reasons) is not tuple or len(self.failure_reasons) > ATTEMPTS_MAX:
            raise LedgerError(f"failure_reasons must be a tuple of at most {ATTEMPTS_MAX}")
        for reason in self.failure_reasons:
            _text(reason, "failure reason", REASON_CHARS_MAX, empty_ok=True)
        if type(self.bids) is not tuple or len(self.bids) > BIDS_MAX:
            raise LedgerError(f"bids must be a tuple of at most {BIDS_MAX}")
        if not all(isinstance(bid, BidRecord) for bid in self.bids):
            raise LedgerError("bids must be BidRecord values")
        if self.agent is not None:
            _text(self.agent, "agent", AGENT_CHARS_MAX)
        self._check_state()

    def _check_state(self) -> None:
        if self.state is TaskState.AWARDED:
            if self.contractor is None or self.lease_id is None:
                raise LedgerError("an awarded task needs a contractor and a lease_id")
        elif self.lease_id is not None:
            raise LedgerError(f"a {self.state.value} task holds no lease, got {self.lease_id}")
        if self.state is TaskState.OPEN and self.contractor is not None:
            raise LedgerError("an open task has no contractor")
        has_result = self.result is not None or self.result_digest is not None
        if has_result != (self.state is TaskState.DONE):
            raise LedgerError(
                f"a {self.state.value} task {'lacks' if not has_result else 'has'} a result"
            )
        if (self.result_digest is None) != (self.result_location is None):
            raise LedgerError("result_digest and result_location go together")
        if self.result is not None and self.result_digest is not None:
            raise LedgerError("a result is inline or a digest, not both")

    @property
    def key(self) -> str:
        """The KV key of this record."""
        return task_key(self.task_id)

    @property
    def final(self) -> bool:
        """True once done, failed or cancelled."""
        return self.state in FINAL_STATES


def task_key(task_id: str) -> str:
    """The KV key of task ``task_id``."""
    return KEY_PREFIX + task_id


# ------------------------------------------------------------------- bytes


def encode_record(record: TaskRecord) -> bytes:
    """Canonical msgpack bytes of ``record``: a list of its fields in declaration order."""
    r = record
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            RECORD_FORMAT,
            r.task_id,
            r.capability,
            r.input,
            r.state.value,
            r.epoch,
            r.contractor,
            r.lease_id,
            r.attempts,
            r.max_attempts,
            r.result,
            r.result_digest,
            r.result_location,
            list(r.failure_reasons),
            [[b.node_id, b.cost, b.duration_s, b.load, b.confidence] for b in r.bids],
            r.agent,
        ],
        use_bin_type=True,
    )


_RECORD_FIELDS = {1: 14, 2: 15, 3: 16}


def decode_record(data: bytes) -> TaskRecord:
    """The record in ``data`` (from ``encode_record``); ``LedgerError`` naming the fault."""
    if type(data) is not bytes:
        raise LedgerError(f"task record must be bytes, got {type(data).__name__}")
    try:
        items: Any = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise LedgerError(f"task record is not valid msgpack ({len(data)} bytes): {exc}") from None
    if type(items) is not list or not items:
        raise LedgerError(f"task record must be a list, got {_show(items)}")
    fields = _RECORD_FIELDS.get(items[0]) if type(items[0]) is int else None
    if fields is None:
        raise LedgerError(f"unknown task record format {_show(items[0])}, expected "
                          f"{RECORD_FORMAT}")
    if len(items) != fields:
        raise LedgerError(f"a format {items[0]} task record has {fields} items, got "
                          f"{len(items)}")
    state = _STATE_BY_VALUE.get(items[4]) if type(items[4]) is str else None
    if state is None:
        raise LedgerError(f"unknown task state {_show(items[4])}")
    if type(items[13]) is not list:
        raise LedgerError(f"failure_reasons must be a list, got {_show(items[13])}")
    return TaskRecord(
        task_id=items[1],
        capability=items[2],
        input=items[3],
        state=state,
        epoch=items[5],
        contractor=items[6],
        lease_id=items[7],
        attempts=items[8],
        max_attempts=items[9],
        result=items[10],
        result_digest=items[11],
        result_location=items[12],
        failure_reasons=tuple(items[13]),
        bids=_decode_bids(items[14]) if fields > 14 else (),
        agent=items[15] if fields > 15 else None,
    )


def _decode_bids(value: object) -> tuple[BidRecord, ...]:
    if type(value) is not list or len(value) > BIDS_MAX:
        raise LedgerError(f"bids must be a list of at most {BIDS_MAX}, got {_show(value)}")
    bids = []
    for bid in value:
        if type(bid) is not list or len(bid) != 5:
            raise LedgerError(f"a bid must be a list of 5 items, got {_show(bid)}")
        bids.append(BidRecord(*bid))
    return tuple(bids)


# ------------------------------------------------------------- transitions


class RefusalReason(enum.Enum):
    """Why a transition is not allowed."""

    FINAL = "final"
    """The task is already done, failed or cancelled."""
    STALE_EPOCH = "stale_epoch"
    """The epoch named is older than the record's (fencing)."""
    FUTURE_EPOCH = "future_epoch"
    """The epoch named is newer than the record's (a caller bug: epochs come from the ledger)."""
    WRONG_STATE = "wrong_state"
    """The task is not in a state this transition starts from."""
    NOT_CONTRACTOR = "not_contractor"
    """The node named is not the one the task is awarded to."""
    INVALID = "invalid"
    """An argument is malformed (``detail`` says which)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A transition that is not allowed, and why."""

    reason: RefusalReason
    detail: str


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to propose: ``command`` writes ``record`` if the key is still at the
    version it was read at."""

    command: CompareAndSet | CompareAndSetWithWrites
    record: TaskRecord


def create(
    task_id: str, capability: str, input: bytes, *, max_attempts: int = 3,
    owner: bytes | None = None,
) -> Transition:
    """A new task, open at epoch 1; the CAS expects the key absent (version 0).

    With ``owner`` the same write also sets ``owner/<task_id>`` to that node: the
    manager that records a task claims it without a second write.
    Raises ``LedgerError`` for malformed arguments (this is a local request, not a
    peer's message).
    """
    record = TaskRecord(task_id, capability, input, max_attempts=max_attempts)
    if owner is not None and (type(owner) is not bytes or not owner):
        raise LedgerError(f"owner must be a node id (bytes), got {_show(owner)}")
    transition = _write(record, 0)
    if owner is None:
        return transition
    command = transition.command
    assert isinstance(command, CompareAndSetWithWrites)
    claimed = replace(command, writes=(*command.writes, (OWNER_PREFIX + task_id, owner)))
    return Transition(claimed, record)


def award(
    current: TaskRecord, version: int, *, epoch: int, contractor: bytes, lease_id: int,
    bids: tuple[BidRecord, ...] = (),
) -> Transition | Refusal:
    """Award ``current`` at ``epoch`` to ``contractor`` under ``lease_id``: only from open.
    ``bids`` (best first, the first ``BIDS_MAX`` kept) replace those of earlier awards."""
    refusal = _at_epoch(current, epoch, TaskState.OPEN)
    if refusal is not None:
        return refusal
    return _change(
        current, version, state=TaskState.AWARDED, contractor=contractor, lease_id=lease_id,
        bids=tuple(bids)[:BIDS_MAX],
    )


def complete(
    current: TaskRecord,
    version: int,
    *,
    epoch: int,
    contractor: bytes,
    result: bytes | None = None,
    digest: bytes | None = None,
    location: str | None = None,
    agent: str | None = None,
) -> Transition | Refusal:
    """Record the result of the awarded ``contractor`` at ``epoch``: then ``done``.

    Give ``result`` inline, or ``digest`` and ``location``; ``agent`` names the
    agent that produced it. Refused for an older epoch (fencing), another
    contractor, or a task not awarded.
    """
    refusal = _at_epoch(current, epoch, TaskState.AWARDED)
    if refusal is not None:
        return refusal
    if current.contractor != contractor:
        return Refusal(
            RefusalReason.NOT_CONTRACTOR,
            f"task {current.task_id} epoch {epoch} is awarded to "
            f"{_hex(current.contractor)}, not {_hex(contractor)}",
        )
    return _change(
        current,
        version,
        state=TaskState.DONE,
        lease_id=None,
        result=result,
        result_digest=digest,
        result_location=location,
        agent=agent,
    )


def fail_attempt(
    current: TaskRecord, version: int, *, epoch: int, reason: str
) -> Transition | Refusal:
    """End the attempt at ``epoch`` without a result (from open or awarded).

    The task reopens at ``epoch + 1``, or is ``failed`` once ``max_attempts``
    attempts have ended so; ``reason`` (cut to 256 characters) is kept.
    """
    refusal = _at_epoch(current, epoch, TaskState.OPEN, TaskState.AWARDED)
    if refusal is not None:
        return refusal
    attempts = current.attempts + 1
    reasons = (*current.failure_reasons, _clip(reason))
    if attempts >= current.max_attempts:
        return _change(
            current,
            version,
            state=TaskState.FAILED,
            contractor=None,
            lease_id=None,
            attempts=attempts,
            failure_reasons=reasons,
        )
    return _change(
        current,
        version,
        state=TaskState.OPEN,
        epoch=epoch + 1,
        contractor=None,
        lease_id=None,
        attempts=attempts,
        failure_reasons=reasons,
    )


def reopen(
    current: TaskRecord, version: int, *, epoch: int, reason: str = "contractor lost"
) -> Transition | Refusal:
    """The contractor of ``epoch`` died or its lease expired: like ``fail_attempt``,
    but only from awarded (the attempt counts, so a task that keeps killing its
    contractors still ends ``failed``)."""
    refusal = _at_epoch(current, epoch, TaskState.AWARDED)
    if refusal is not None:
        return refusal
    return fail_attempt(current, version, epoch=epoch, reason=reason)


def cancel(current: TaskRecord, version: int, *, reason: str = "cancelled") -> Transition | Refusal:
    """Cancel a task that is not final; ``reason`` is kept with the failure reasons."""
    if current.final:
        return _final(current)
    reasons = (*current.failure_reasons, _clip(reason))[-ATTEMPTS_MAX:]
    return _change(
        current,
        version,
        state=TaskState.CANCELLED,
        contractor=None,
        lease_id=None,
        failure_reasons=reasons,
    )


# ----------------------------------------------------------------- helpers


def _at_epoch(current: TaskRecord, epoch: int, *states: TaskState) -> Refusal | None:
    if current.final:
        return _final(current)
    if type(epoch) is not int:
        return Refusal(RefusalReason.INVALID, f"epoch must be an int, got {_show(epoch)}")
    if epoch < current.epoch:
        return Refusal(
            RefusalReason.STALE_EPOCH,
            f"task {current.task_id} is at epoch {current.epoch}, not {epoch}",
        )
    if epoch > current.epoch:
        return Refusal(
            RefusalReason.FUTURE_EPOCH,
            f"task {current.task_id} is at epoch {current.epoch}, not {epoch}",
        )
    if current.state not in states:
        wanted = " or ".join(state.value for state in states)
        return Refusal(
            RefusalReason.WRONG_STATE,
            f"task {current.task_id} is {current.state.value}, not {wanted}",
        )
    return None


def _final(current: TaskRecord) -> Refusal:
    return Refusal(RefusalReason.FINAL, f"task {current.task_id} is {current.state.value}")


def _change(current: TaskRecord, version: int, **changes: Any) -> Transition | Refusal:
    try:
        record = replace(current, **changes)
    except LedgerError as exc:
        return Refusal(RefusalReason.INVALID, str(exc))
    if type(version) is not int or not 1 <= version <= INT_MAX:
        return Refusal(
            RefusalReason.INVALID, f"version must be 1 to {INT_MAX}, got {_show(version)}"
        )
    return _write(record, version)


def _write(record: TaskRecord, version: int) -> Transition:
    value = encode_record(record)
    command: CompareAndSet | CompareAndSetWithWrites
    if version == 0:
        command = CompareAndSetWithWrites(record.key, value, 0, None, (
            (UNFINISHED_PREFIX + record.task_id, b""),))
    elif record.final:
        command = CompareAndSetWithWrites(record.key, value, version, None, (
            (UNFINISHED_PREFIX + record.task_id, None), (OWNER_PREFIX + record.task_id, None)))
    else:
        command = CompareAndSet(record.key, value, version)
    return Transition(command, record)


def _clip(reason: str) -> str:
    text = reason if isinstance(reason, str) else repr(reason)
    return text[:REASON_CHARS_MAX]


def _hex(node: bytes | None) -> str:
    return "nobody" if node is None else node.hex()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: object, name: str, chars_max: int, *, empty_ok: bool = False) -> None:
    if type(value) is not str:
        raise LedgerError(f"{name} must be a string, got {_show(value)}")
    if not value and not empty_ok:
        raise LedgerError(f"{name} must not be empty")
    if len(value) > chars_max:
        raise LedgerError(f"{name} has {len(value)} characters, more than {chars_max}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(f"{name} is not valid Unicode: {_show(value)}") from None


def _bytes(value: object, name: str, bytes_max: int, *, empty_ok: bool = False) -> None:
    if type(value) is not bytes:
        raise LedgerError(f"{name} must be bytes, got {_show(value)}")
    if not value and not empty_ok:
        raise LedgerError(f"{name} must not be empty")
    if len(value) > bytes_max:
        raise LedgerError(f"{name} has {len(value)} bytes, more than {bytes_max}")


def _int(value: object, name: str, low: int, high: int = INT_MAX) -> None:
    if type(value) is not int or not low <= value <= high:
        raise LedgerError(f"{name} must be an integer from {low} to {high}, got {_show(value)}")
