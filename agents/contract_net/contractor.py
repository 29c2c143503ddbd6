"""The contract-net contractor core: bids on calls for proposals and runs what it wins.

How this works
--------------
A ``cnet.cfp`` is answered at once:

- ``cnet.refuse`` when this node lacks the capability, when the places it holds
  (running tasks, outstanding bids, places held for batches) reach
  ``tasks_running_max`` (or its bids ``offers_max``), when the
  optional ``room`` check says the agents able to do this capability have no
  place left for it (it is given the tasks held per capability, running or bid
  on), when the estimator declines, or when it already runs that task epoch. A
  refusal for lack of a place is marked ``busy``;
- otherwise ``cnet.propose`` with the estimator's cost, duration and confidence
  and the current load, (running + outstanding bids) / ``tasks_running_max``.
  The bid is remembered as an *offer* until the bid window plus
  ``award_grace_s`` has passed (counted from the latest ``tick``), or the
  manager rejects it, and counts against the limits meanwhile, so winning every
  bid never overcommits the node. (Managers reject the losing bids as soon as
  they decide, so a bid holds its place for about one round trip.)

Calls a manager sent as one batch (``batch_id``, ``batch_size`` > 1) are treated
as one request for places: the contractor holds a place for each call of the
batch while it has room, and once it has none left it still bids on the batch's
other calls without holding more, saying in every bid (``capacity``) how many
places it holds for the batch. The manager then awards the batch jointly and
gives this node at most that many of its tasks: the cheapest contractor's
places go to the tasks where they save the most, not to the calls that happened
to arrive first. As the batch's bids are rejected, accepted or expire, the
places it holds shrink to the bids still open.

A manager's ``cnet.query`` about an award is answered with
``cnet.progress(running=True)`` while the task runs, with the result again when
it finished (the last ``results_kept_max`` results are kept), and with
``running=False`` when this node does not hold that award (its accept was lost):
the manager then gives the attempt up.

``cnet.accept`` from the manager an offer was made to turns the offer into a
running task and emits ``StartTask`` for the driver; an accept for an offer
already forgotten is answered with ``cnet.failure`` so that the manager
re-auctions. ``cnet.reject`` drops the offer. When the task ends the driver calls
``task_finished`` (-> ``cnet.inform``) or ``task_failed`` (-> ``cnet.failure``).

Tasks are keyed by (task id, epoch): a task re-awarded at a newer epoch is a new
task here, and the old epoch's result will be refused by the ledger. Anything
unexpected from a peer is counted (``COUNTERS``), never raised.

Purity: time comes only from ``tick(now)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydantic import BaseModel, ValidationError

from agents.contract_net.events import ContractorEvent, StartTask
from agents.contract_net.messages import (
    ACCEPT,
    CFP,
    FAILURE,
    INFORM,
    PROGRESS,
    PROPOSE,
    QUERY,
    REASON_CHARS_MAX,
    REFUSE,
    REJECT,
    AcceptProposal,
    CallForProposals,
    Failure,
    InformResult,
    Progress,
    ProgressQuery,
    Propose,
    Refuse,
    RejectProposal,
)
from agents.contract_net.settings import ContractorSettings
from consensus.core import Incoming, Outgoing

__all__ = [
    "CONTRACTOR_MESSAGE_KINDS",
    "COUNTERS",
    "Contractor",
    "Estimate",
    "Estimator",
    "RoomCheck",
    "fixed_estimator",
]

CONTRACTOR_MESSAGE_KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {CFP: CallForProposals, ACCEPT: AcceptProposal, REJECT: RejectProposal,
     QUERY: ProgressQuery}
)
"""The kinds the contractor consumes."""

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "cfps_received": "calls for proposals received",
        "proposals_sent": "bids sent",
        "refused_capability": "refusals: the capability is not offered here",
        "queries_received": "progress queries from managers",
        "results_resent": "queries about a finished task answered with its result again",
        "refused_busy": "refusals: tasks_running_max, offers_max or the room check reached",
        "refused_declined": "refusals: the estimator declined the task",
        "refused_running": "refusals: that task epoch already runs here",
        "offers_expired": "bids forgotten after their window plus award_grace_s",
        "accepts_received": "accepts that started a task",
        "accepts_unknown": "accepts for a bid not (or no longer) held: answered with failure",
        "accepts_overbooked": "accepts beyond the places held for their batch (run anyway)",
        "proposals_overbooked": "bids on a batch's calls beyond the places held for it",
        "accepts_duplicate": "accepts for a task epoch already running",
        "rejects_received": "rejects that dropped a bid",
        "rejects_unknown": "rejects for a bid not held",
        "results_sent": "results sent by task_finished",
        "failures_sent": "failures sent by task_failed or for unknown accepts",
        "finishes_unknown": "task_finished/task_failed calls for a task not running",
        "results_invalid": "task_finished calls whose result would not be a valid payload",
        "messages_unexpected": "messages of kinds the contractor does not consume",
    }
)
"""Every name in ``Contractor.counters`` with what it counts; all start at zero."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a contractor quotes for a task: cost, seconds to run, confidence 0 to 1."""

    cost: float
    duration_s: float
    confidence: float = 1.0


Estimator = Callable[[CallForProposals], Estimate | None]
"""Quotes a CFP, or declines it with None. Must be pure and quick (it runs inline)."""

RoomCheck = Callable[[Mapping[str, int], str], bool]
"""``room(held, capability)``: whether one more task of ``capability`` fits beside
``held`` (tasks running or bid on, per capability). Pure and quick, like the
estimator; ``AgentHost.has_room`` is one, for agents with their own limits."""


def fixed_estimator(estimate: Estimate) -> Estimator:
    """An estimator quoting ``estimate`` for every task."""
    return lambda cfp: estimate


_TaskKey = tuple[str, int]
_GroupKey = tuple[bytes, int]
"""(manager, batch id): the calls one manager sent as one batch."""


@dataclass(frozen=True, slots=True)
class _Offer:
    manager: bytes
    cfp: CallForProposals
    expires_at: float
    group: _GroupKey | None = None


@dataclass(slots=True)
class _Group:
    """The places held for one batch: per capability, places held and bids open."""

    places: dict[str, int]
    bids: dict[str, int]

    def places_total(self) -> int:
        return sum(self.places.values())

    def bids_total(self) -> int:
        return sum(self.bids.values())


@dataclass(frozen=True, slots=True)
class _Running:
    manager: bytes
    capability: str


class Contractor:
    """One node's side of the contract net as a bidder; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: bytes,
        capabilities: Iterable[str],
        settings: ContractorSettings | None = None,
        estimator: Estimator | None = None,
        room: RoomCheck | None = None,
        now: float = 0.0,
    ) -> None:
        self._node_id = node_id
        self._capabilities = frozenset(capabilities)
        self._settings = settings if settings is not None else ContractorSettings()
        self._estimator = estimator or fixed_estimator(Estimate(cost=1.0, duration_s=1.0))
        self._room = room
        self._lease_id: int | None = None
        self._now = now
        self._offers: dict[_TaskKey, _Offer] = {}
        self._groups: dict[_GroupKey, _Group] = {}
        self._grouped_offers = 0
        self._group_places = 0
        self._running: dict[_TaskKey, _Running] = {}
        self._results: dict[_TaskKey, InformResult] = {}  # the newest last
        self._results_bytes = 0
        self._outbox: list[Outgoing] = []
        self._events: list[ContractorEvent] = []
        self._counters = dict.fromkeys(COUNTERS, 0)

    # -- driver interface ----------------------------------------------------------

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """``cnet.cfp``, ``cnet.accept`` and ``cnet.reject``."""
        return CONTRACTOR_MESSAGE_KINDS

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of what happened (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    @property
    def capabilities(self) -> frozenset[str]:
        """The capabilities this contractor bids for."""
        return self._capabilities

    def set_capabilities(self, capabilities: Iterable[str]) -> None:
        """Replace the capabilities (running tasks and bids made are unaffected)."""
        self._capabilities = frozenset(capabilities)

    @property
    def lease_id(self) -> int | None:
        """The lease offered with every bid (see ``set_lease``)."""
        return self._lease_id

    def set_lease(self, lease_id: int | None) -> None:
        """Offer ``lease_id`` with bids from now on: a KV lease the driver keeps alive
        while this node is up, under which a manager may record the award (None:
        offer none)."""
        self._lease_id = lease_id

    @property
    def running(self) -> list[tuple[str, int]]:
        """(task id, epoch) of the running tasks, in the order they started."""
        return list(self._running)

    def holds(self, task_id: str, epoch: int) -> bool:
        """Whether the task epoch runs here (accepted, not yet reported)."""
        return (task_id, epoch) in self._running

    @property
    def offers(self) -> int:
        """Outstanding bids."""
        return len(self._offers)

    @property
    def places_held(self) -> int:
        """Places spoken for: running tasks, bids on their own and places held for
        batches (which may have more bids than places)."""
        return len(self._running) + len(self._offers) - self._grouped_offers + self._group_places

    def take_outbox(self) -> list[Outgoing]:
        """Remove and return the messages produced since the last call, in order."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def take_events(self) -> list[ContractorEvent]:
        """Remove and return the events produced since the last call, in order."""
        events, self._events = self._events, []
        return events

    def step(self, message: Incoming) -> None:
        """Feed one received, verified message. Never raises on a schema-valid payload."""
        payload = message.payload
        if isinstance(payload, CallForProposals):
            self._on_cfp(message.sender, payload)
        elif isinstance(payload, AcceptProposal):
            self._on_accept(message.sender, payload)
        elif isinstance(payload, RejectProposal):
            self._on_reject(message.sender, payload)
        elif isinstance(payload, ProgressQuery):
            self._on_query(message.sender, payload)
        else:
            self._counters["messages_unexpected"] += 1

    def tick(self, now: float) -> None:
        """Advance time; forget bids whose window and grace have passed."""
        self._now = max(self._now, now)
        expired = [key for key, offer in self._offers.items() if offer.expires_at <= self._now]
        for key in expired:
            self._release(key)
        self._counters["offers_expired"] += len(expired)

    # -- the driver reports --------------------------------------------------------

    def task_finished(
        self,
        task_id: str,
        epoch: int,
        *,
        result: bytes | None = None,
        digest: bytes | None = None,
        location: str | None = None,
        agent: str | None = None,
    ) -> bool:
        """The task ended with ``result`` (or ``digest`` + ``location``), produced by
        ``agent``: inform the manager.

        False (counted) if the task is not running, or the result is not a valid
        payload (too large, both forms given...); the task then stays running so the
        driver can report again, e.g. with a digest.
        """
        running = self._running.get((task_id, epoch))
        if running is None:
            self._counters["finishes_unknown"] += 1
            return False
        try:
            inform = InformResult(task_id=task_id, epoch=epoch, result=result, digest=digest,
                                  location=location, agent=agent)
        except ValidationError:
            self._counters["results_invalid"] += 1
            return False
        del self._running[(task_id, epoch)]
        self._counters["results_sent"] += 1
        self._outbox.append(Outgoing(INFORM, (inform,), to_node=running.manager))
        self._keep_result((task_id, epoch), inform)
        return True

    def _keep_result(self, key: _TaskKey, inform: InformResult) -> None:
        size = len(inform.result or b"") + len(inform.digest or b"") + len(inform.location or "")
        if size > self._settings.results_kept_bytes_max:
            return
        self._results[key] = inform
        self._results_bytes += size
        while (len(self._results) > self._settings.results_kept_max
               or self._results_bytes > self._settings.results_kept_bytes_max):
            oldest = self._results.pop(next(iter(self._results)))
            self._results_bytes -= (len(oldest.result or b"") + len(oldest.digest or b"")
                                    + len(oldest.location or ""))

    def _on_query(self, manager: bytes, query: ProgressQuery) -> None:
        key = (query.task_id, query.epoch)
        self._counters["queries_received"] += 1
        result = self._results.get(key)
        if result is not None:
            self._counters["results_resent"] += 1
            self._outbox.append(Outgoing(INFORM, (result,), to_node=manager))
            return
        progress = Progress(task_id=query.task_id, epoch=query.epoch,
                            running=key in self._running)
        self._outbox.append(Outgoing(PROGRESS, (progress,), to_node=manager))

    def task_failed(self, task_id: str, epoch: int, reason: str) -> bool:
        """The task could not be done: tell the manager. False (counted) if not running."""
        running = self._running.pop((task_id, epoch), None)
        if running is None:
            self._counters["finishes_unknown"] += 1
            return False
        self._send_failure(running.manager, task_id, epoch, reason)
        return True

    # -- internals -----------------------------------------------------------------

    def _on_cfp(self, manager: bytes, cfp: CallForProposals) -> None:
        self._counters["cfps_received"] += 1
        key = (cfp.task_id, cfp.epoch)
        if key in self._offers and key not in self._running:
            self._release(key)  # a new round of a call already bid on: bid again in its place
        group_key = (manager, cfp.batch_id) if cfp.batch_id is not None and cfp.batch_size > 1 \
            else None
        reason = self._refusal(key, cfp)
        holds_place = reason is None
        if reason == "busy" and group_key is not None and self._may_overbook(group_key):
            reason, holds_place = None, False
        estimate = None
        if reason is None:
            estimate = self._estimator(cfp)
            if estimate is None:
                self._counters["refused_declined"] += 1
        if estimate is None:
            self._refuse(manager, cfp, reason or "declined", busy=reason == "busy")
            return
        held = self.places_held
        group = self._groups.get(group_key) if group_key is not None else None
        capacity = None
        if group_key is not None:
            batch_places = group.places_total() if group is not None else 0
            capacity = batch_places + holds_place
            # The load before the batch: every bid of one batch quotes the same.
            held -= batch_places
        try:
            propose = Propose(
                task_id=cfp.task_id,
                epoch=cfp.epoch,
                round=cfp.round,
                cost=estimate.cost,
                duration_s=estimate.duration_s,
                load=held / self._settings.tasks_running_max,
                confidence=estimate.confidence,
                lease_id=self._lease_id,
                capacity=capacity,
            )
        except ValidationError:  # the estimator quoted a negative or infinite number
            self._counters["refused_declined"] += 1
            self._refuse(manager, cfp, "bad estimate")
            return
        expires_at = self._now + cfp.bid_window_ms / 1000 + self._settings.award_grace_s
        self._offers[key] = _Offer(manager, cfp, expires_at, group_key)
        if group_key is not None:
            if group is None:
                group = self._groups[group_key] = _Group({}, {})
            group.bids[cfp.capability] = group.bids.get(cfp.capability, 0) + 1
            self._grouped_offers += 1
            if holds_place:
                group.places[cfp.capability] = group.places.get(cfp.capability, 0) + 1
                self._group_places += 1
            else:
                self._counters["proposals_overbooked"] += 1
        self._counters["proposals_sent"] += 1
        self._outbox.append(Outgoing(PROPOSE, (propose,), to_node=manager))

    def _may_overbook(self, group_key: _GroupKey) -> bool:
        """Whether a busy node may still bid on a call of this batch: it holds a
        place for the batch already, and the table of bids has room."""
        group = self._groups.get(group_key)
        return (group is not None and group.places_total() > 0
                and len(self._offers) < self._settings.offers_max)

    def _refusal(self, key: _TaskKey, cfp: CallForProposals) -> str | None:
        if cfp.capability not in self._capabilities:
            self._counters["refused_capability"] += 1
            return f"no capability {cfp.capability}"[:REASON_CHARS_MAX]
        if key in self._running:
            self._counters["refused_running"] += 1
            return "already running"
        if (
            self.places_held >= self._settings.tasks_running_max
            or len(self._offers) >= self._settings.offers_max
        ):
            self._counters["refused_busy"] += 1
            return "busy"
        if self._room is not None and not self._room(self._held_by_capability(), cfp.capability):
            self._counters["refused_busy"] += 1
            return "busy"
        return None

    def _held_by_capability(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for offer in self._offers.values():
            if offer.group is None:
                held[offer.cfp.capability] = held.get(offer.cfp.capability, 0) + 1
        for group in self._groups.values():
            for capability, places in group.places.items():
                held[capability] = held.get(capability, 0) + places
        for running in self._running.values():
            held[running.capability] = held.get(running.capability, 0) + 1
        return held

    def _release(self, key: _TaskKey, *, started: bool = False) -> _Offer:
        """Forget the bid ``key`` (it was rejected, expired, re-called or, with
        ``started``, accepted: then it takes one of its batch's places with it)
        and shrink its batch's places to the batch's open bids."""
        offer = self._offers.pop(key)
        if offer.group is None:
            return offer
        group = self._groups[offer.group]
        capability = offer.cfp.capability
        self._grouped_offers -= 1
        group.bids[capability] -= 1
        if started:
            if group.places_total() == 0:
                self._counters["accepts_overbooked"] += 1
            else:
                self._drop_place(group, capability if group.places.get(capability) else
                                 max(group.places, key=lambda c: group.places[c]))
        while group.places_total() > group.bids_total():
            # Keep the places of the capabilities that still have bids open.
            self._drop_place(group, max(group.places,
                                        key=lambda c: group.places[c] - group.bids.get(c, 0)))
        if group.bids_total() == 0:
            del self._groups[offer.group]
        return offer

    def _drop_place(self, group: _Group, capability: str) -> None:
        group.places[capability] -= 1
        if not group.places[capability]:
            del group.places[capability]
        self._group_places -= 1

    def _on_accept(self, manager: bytes, accept: AcceptProposal) -> None:
        key = (accept.task_id, accept.epoch)
        if key in self._running:
            self._counters["accepts_duplicate"] += 1
            return
        offer = self._offers.get(key)
        if offer is None or offer.manager != manager:
            self._counters["accepts_unknown"] += 1
            self._send_failure(manager, accept.task_id, accept.epoch, "no bid held for this award")
            return
        self._release(key, started=True)
        self._running[key] = _Running(manager, offer.cfp.capability)
        self._counters["accepts_received"] += 1
        cfp = offer.cfp
        self._events.append(
            StartTask(
                task_id=cfp.task_id,
                epoch=cfp.epoch,
                manager=manager,
                lease_id=accept.lease_id,
                capability=cfp.capability,
                input_summary=cfp.input_summary,
                constraints=MappingProxyType(dict(cfp.constraints)),
                input=accept.input,
            )
        )

    def _on_reject(self, manager: bytes, reject: RejectProposal) -> None:
        key = (reject.task_id, reject.epoch)
        offer = self._offers.get(key)
        if offer is None or offer.manager != manager:
            self._counters["rejects_unknown"] += 1
            return
        self._release(key)
        self._counters["rejects_received"] += 1

    def _refuse(
        self, manager: bytes, cfp: CallForProposals, reason: str, *, busy: bool = False
    ) -> None:
        refuse = Refuse(task_id=cfp.task_id, epoch=cfp.epoch, round=cfp.round, reason=reason,
                        busy=busy)
        self._outbox.append(Outgoing(REFUSE, (refuse,), to_node=manager))

    def _send_failure(self, manager: bytes, task_id: str, epoch: int, reason: str) -> None:
        failure = Failure(task_id=task_id, epoch=epoch, reason=str(reason)[:REASON_CHARS_MAX])
        self._counters["failures_sent"] += 1
        self._outbox.append(Outgoing(FAILURE, (failure,), to_node=manager))
