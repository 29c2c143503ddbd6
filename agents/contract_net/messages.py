"""Contract-net payloads: the wire boundary of the manager and contractor cores.

How this works (FIPA Contract Net, one task epoch at a time):

1. ``cnet.cfp`` (manager -> each candidate): a call for proposals for one task
   epoch and auction ``round`` (a round is one CFP/answer cycle; a round with no
   bids is retried after a backoff at the same epoch with the next round number).
2. ``cnet.propose`` (a bid: cost, estimated duration, load, confidence) or
   ``cnet.refuse`` (with a reason), contractor -> manager.
3. ``cnet.accept`` to the winner once the award is committed in the Raft task
   ledger, ``cnet.reject`` to the other bidders (and to the winner too when the
   ledger compare-and-set lost to another manager).
   Calls for proposals a manager sends out together carry one ``batch_id``: a
   contractor may bid on every task of a batch while holding only the places it
   has (it says how many in ``capacity``), and the manager awards the batch
   jointly within those capacities (see ``manager`` and ``contractor``).
4. ``cnet.inform`` (the result, or its digest and where to fetch it) or
   ``cnet.failure`` (with a reason), contractor -> manager.

Every message names ``task_id`` and ``epoch``; a message of an older epoch is
stale and is ignored (and, for results, refused by the ledger's fencing).

The bid deadline is *relative*: ``bid_window_ms`` counts from when the contractor
receives the CFP. Monotonic clocks of two nodes are not comparable and wall
clocks drift, so an absolute deadline would mean different moments on each
side; the manager keeps the absolute deadline in its own clock and decides there.

Limits here are hard caps independent of the settings, so that the envelope
layer rejects oversized payloads before any core sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ACCEPT",
    "BATCH_TASKS_MAX",
    "BID_WINDOW_MS_MAX",
    "CAPABILITY_CHARS_MAX",
    "CFP",
    "CONSTRAINTS_MAX",
    "CONSTRAINT_KEY_CHARS_MAX",
    "CONSTRAINT_TEXT_CHARS_MAX",
    "DIGEST_BYTES_MAX",
    "EPOCH_MAX",
    "ESTIMATE_MAX",
    "FAILURE",
    "INFORM",
    "INPUT_SUMMARY_CHARS_MAX",
    "LOCATION_CHARS_MAX",
    "MESSAGE_KINDS",
    "PROGRESS",
    "PROPOSE",
    "QUERY",
    "REASON_CHARS_MAX",
    "REFUSE",
    "REJECT",
    "RESULT_BYTES_WIRE_MAX",
    "TASK_ID_CHARS_MAX",
    "AcceptProposal",
    "CallForProposals",
    "Failure",
    "InformResult",
    "Progress",
    "ProgressQuery",
    "Propose",
    "Refuse",
    "RejectProposal",
]

CFP = "cnet.cfp"
PROPOSE = "cnet.propose"
REFUSE = "cnet.refuse"
ACCEPT = "cnet.accept"
REJECT = "cnet.reject"
INFORM = "cnet.inform"
FAILURE = "cnet.failure"
QUERY = "cnet.query"
PROGRESS = "cnet.progress"

TASK_ID_CHARS_MAX = 128
"""Longest task id."""
CAPABILITY_CHARS_MAX = 128
"""Longest capability name."""
INPUT_SUMMARY_CHARS_MAX = 4096
"""Longest input summary in a CFP (the full input lives in the task ledger)."""
CONSTRAINTS_MAX = 32
"""Most constraint entries in a CFP."""
CONSTRAINT_KEY_CHARS_MAX = 64
"""Longest constraint name."""
CONSTRAINT_TEXT_CHARS_MAX = 256
"""Longest text constraint value."""
REASON_CHARS_MAX = 256
"""Longest refusal, rejection or failure reason."""
INPUT_BYTES_WIRE_MAX = 256 * 1024
"""Largest task input an award carries (the task ledger's limit)."""
RESULT_BYTES_WIRE_MAX = 1024 * 1024
"""Largest inline result; bigger results travel as a digest and a location."""
DIGEST_BYTES_MAX = 64
"""Longest result digest (BLAKE2b-512 fits)."""
LOCATION_CHARS_MAX = 1024
"""Longest result location (a URL, a KV key, a path on the contractor)."""
EPOCH_MAX = 2**63 - 1
"""Largest epoch, round or lease id on the wire (a signed 64-bit integer)."""
BATCH_TASKS_MAX = 1024
"""Most tasks one batch of calls for proposals may hold."""
BID_WINDOW_MS_MAX = 3_600_000
"""Longest bid window: one hour."""
ESTIMATE_MAX = 1e12
"""Largest cost, duration (s) or load a bid may carry."""

TaskId = Annotated[str, Field(min_length=1, max_length=TASK_ID_CHARS_MAX)]
Epoch = Annotated[int, Field(ge=1, le=EPOCH_MAX)]
Round = Annotated[int, Field(ge=1, le=EPOCH_MAX)]
Capability = Annotated[str, Field(min_length=1, max_length=CAPABILITY_CHARS_MAX)]
Reason = Annotated[str, Field(max_length=REASON_CHARS_MAX)]
Estimate = Annotated[float, Field(ge=0.0, le=ESTIMATE_MAX, allow_inf_nan=False)]
ConstraintKey = Annotated[str, Field(min_length=1, max_length=CONSTRAINT_KEY_CHARS_MAX)]
ConstraintValue = (
    bool
    | Annotated[int, Field(ge=-EPOCH_MAX - 1, le=EPOCH_MAX)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | Annotated[str, Field(max_length=CONSTRAINT_TEXT_CHARS_MAX)]
)
"""A constraint's value: a flag, a number or a short text (e.g. ``"gpu": True``)."""


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class CallForProposals(_Payload):
    """A call for proposals for task ``task_id`` at ``epoch``, auction ``round``.

    The contractor answers within ``bid_window_ms`` of receiving it; later answers
    are ignored by the manager.
    """

    task_id: TaskId
    epoch: Epoch
    round: Round = 1
    capability: Capability
    input_summary: str = Field(default="", max_length=INPUT_SUMMARY_CHARS_MAX)
    constraints: dict[ConstraintKey, ConstraintValue] = Field(
        default_factory=dict, max_length=CONSTRAINTS_MAX
    )
    bid_window_ms: int = Field(ge=1, le=BID_WINDOW_MS_MAX)
    batch_id: int | None = Field(default=None, ge=0, le=EPOCH_MAX)
    """Set when the manager called for ``batch_size`` tasks at once and will award
    them jointly (None: this task alone)."""
    batch_size: int = Field(default=1, ge=1, le=BATCH_TASKS_MAX)



class Propose(_Payload):
    """A bid. Lower cost, sooner finish and lower load win (see ``scoring``).

    ``load`` is the contractor's work in hand per task slot, (running tasks +
    outstanding bids) / concurrency limit: 0 idle, 1 every slot spoken for, more
    when it over-commits; the manager reads ``load * duration_s`` as queueing time.
    ``confidence`` (0 to 1) is how sure the contractor is that it can do the task.
    """

    task_id: TaskId
    epoch: Epoch
    round: Round = 1
    cost: Estimate
    duration_s: Estimate
    load: Estimate
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    lease_id: int | None = Field(default=None, ge=1, le=EPOCH_MAX)
    """A KV lease the contractor keeps alive while it is up: the award may be
    recorded under it, so the task reopens when the contractor stops renewing it
    (None: the manager grants one for the award)."""
    capacity: int | None = Field(default=None, ge=1, le=BATCH_TASKS_MAX)
    """For a call in a batch: how many of the batch's tasks this contractor holds
    places for, at most (None: the bid holds its own place)."""


class Refuse(_Payload):
    """The contractor will not bid (no such capability, busy, ...).

    ``busy`` marks a refusal for lack of a free slot only: the contractor has the
    capability and may bid once a running task ends, so the manager waits for it
    rather than counting the round as one without a taker.
    """

    task_id: TaskId
    epoch: Epoch
    round: Round = 1
    reason: Reason = ""
    busy: bool = False


class AcceptProposal(_Payload):
    """The award of ``task_id`` at ``epoch``, committed in the task ledger.

    ``lease_id`` is the KV lease the award is recorded under; the contractor keeps
    it alive while it works (None when the manager's driver uses no lease).
    ``input`` is the task's full input as the ledger holds it, so the winner need
    not read it back (None: read it from the ledger).
    """

    task_id: TaskId
    epoch: Epoch
    lease_id: int | None = Field(default=None, ge=1, le=EPOCH_MAX)
    input: bytes | None = Field(default=None, max_length=INPUT_BYTES_WIRE_MAX)


class RejectProposal(_Payload):
    """The bid lost, or the award could not be committed."""

    task_id: TaskId
    epoch: Epoch
    reason: Reason = ""


class InformResult(_Payload):
    """The task's result: inline ``result`` bytes, or a ``digest`` and ``location``.

    Exactly one form is given; a digest always comes with its location.
    """

    task_id: TaskId
    epoch: Epoch
    result: bytes | None = Field(default=None, max_length=RESULT_BYTES_WIRE_MAX)
    digest: bytes | None = Field(default=None, min_length=1, max_length=DIGEST_BYTES_MAX)
    location: str | None = Field(default=None, min_length=1, max_length=LOCATION_CHARS_MAX)
    agent: str | None = Field(default=None, min_length=1, max_length=CAPABILITY_CHARS_MAX)
    """The agent that produced the result, for the ledger and timelines."""

    @model_validator(mode="after")
    def _one_form(self) -> InformResult:
        inline = self.result is not None
        remote = self.digest is not None and self.location is not None
        if inline == remote or (not remote and (self.digest, self.location) != (None, None)):
            raise ValueError("give either result, or both digest and location")
        return self


class Failure(_Payload):
    """The contractor could not finish the task."""

    task_id: TaskId
    epoch: Epoch
    reason: Reason = ""


class ProgressQuery(_Payload):
    """The manager asks the awarded contractor whether it still runs ``task_id`` at
    ``epoch``: an award whose accept or result was lost would otherwise wait
    forever under a lease that stays alive with its node."""

    task_id: TaskId
    epoch: Epoch


class Progress(_Payload):
    """The contractor's answer: ``running`` while the task runs. A contractor that
    finished it answers with the result again (``cnet.inform``) instead, one that
    never heard of the award with ``running=False``."""

    task_id: TaskId
    epoch: Epoch
    running: bool


MESSAGE_KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {
        CFP: CallForProposals,
        PROPOSE: Propose,
        REFUSE: Refuse,
        ACCEPT: AcceptProposal,
        REJECT: RejectProposal,
        INFORM: InformResult,
        FAILURE: Failure,
        QUERY: ProgressQuery,
        PROGRESS: Progress,
    }
)
"""Every ``cnet.*`` kind with its payload model."""
