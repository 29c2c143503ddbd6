"""What the contract-net cores ask of their driver, besides sending messages.

How this works: the manager and the contractor append these frozen events to a
list the driver drains with ``take_events`` after every ``step``, ``tick`` or
local call, in order, together with ``take_outbox``. Events ask for work the
cores cannot do themselves: a ledger write (the manager's events) or running a
task (the contractor's ``StartTask``). The driver reports back by calling the
core (``Manager.award_committed``, ``Contractor.task_finished`` ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agents.contract_net.scoring import Bid

__all__ = [
    "AwardDecision",
    "ContractorEvent",
    "FailureReported",
    "ManagerEvent",
    "NoBids",
    "ResultReported",
    "StartTask",
]


@dataclass(frozen=True, slots=True)
class AwardDecision:
    """Bids are in: award ``task_id`` at ``epoch`` to ``winner.node_id``.

    The driver proposes ``ledger.award`` (a compare-and-set) and then calls
    ``Manager.award_committed(task_id, epoch, ok, lease_id)``. ``ranked`` holds
    every bid, best first (the winner is ``ranked[0]``).
    """

    task_id: str
    epoch: int
    winner: Bid
    ranked: tuple[Bid, ...]


@dataclass(frozen=True, slots=True)
class NoBids:
    """``rounds`` auction rounds at ``epoch`` drew no bid: the manager gave up.

    The driver records ``ledger.fail_attempt`` (which reopens the task at the next
    epoch, or fails it after its last attempt) and may start a new auction.
    """

    task_id: str
    epoch: int
    rounds: int
    busy: bool = False
    """True when capable contractors were busy for ``busy_wait_max_s`` (not that
    no one could do the task)."""


@dataclass(frozen=True, slots=True)
class ResultReported:
    """The awarded contractor reported a result; the driver records ``ledger.complete``
    (which the ledger refuses if the epoch is stale)."""

    task_id: str
    epoch: int
    contractor: bytes
    result: bytes | None
    digest: bytes | None
    location: str | None
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class FailureReported:
    """The awarded contractor gave up; the driver records ``ledger.fail_attempt``."""

    task_id: str
    epoch: int
    contractor: bytes
    reason: str


ManagerEvent = AwardDecision | NoBids | ResultReported | FailureReported
"""Any event of the manager core."""


@dataclass(frozen=True, slots=True)
class StartTask:
    """The contractor won ``task_id`` at ``epoch``: the driver runs it, keeps
    ``lease_id`` alive meanwhile, and calls ``Contractor.task_finished`` or
    ``task_failed`` when it ends."""

    task_id: str
    epoch: int
    manager: bytes
    lease_id: int | None
    capability: str
    input_summary: str
    constraints: Mapping[str, bool | int | float | str]
    input: bytes | None = None
    """The full input, when the award carried it."""


ContractorEvent = StartTask
"""Any event of the contractor core."""
