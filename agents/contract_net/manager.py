"""The contract-net manager core: runs auctions for the tasks this node originates.

How this works
--------------
Per task the manager keeps one ``_Auction`` that moves through phases:

``WAITING``
    Each capability has a *window*: how many of its auctions may collect bids at
    once. An auction beyond it waits, in arrival order, until one leaves
    ``COLLECTING``. The window grows by 1/window with every round that drew a bid
    and halves with every round refused only as busy (additive increase,
    multiplicative decrease, as TCP does with its congestion window): contractors
    hold a place for every bid they make, so a burst of auctions larger than the
    places the cluster has would otherwise draw busy refusals and retries from all
    of them at once, while the window settles near what the cluster can take.
``COLLECTING``
    ``start_auction`` (or the window) called for proposals from every candidate (at
    most ``bids_per_auction_max``). Proposals and refusals of this epoch and round
    from invited nodes are kept, one per node. At the bid deadline (``tick``), or
    as soon as every invitee answered, the manager decides.

    The calls go out with the next ``take_outbox``, and the auctions that entered
    this phase since the previous one go out as *batches* of up to
    ``batch_tasks_max`` tasks. A batch is decided at once, when every invitee of
    every task in it answered or at the deadline, and *jointly*: every task gets
    one of its bidders, no contractor more tasks than the places it holds for the
    batch (``Propose.capacity``), and the sum of the winners' scores is the least
    such an assignment allows (``assignment``: the Hungarian method). Deciding one
    task at a time instead would give the cheapest contractor's few places to the
    calls that reached it first. A task left without a place (the batch had more
    tasks than its bidders had places) is rejected to its bidders and waits as
    after a busy round.
``BACKOFF``
    No bid at all: the manager waits (``no_bid_backoff_s``, doubling each round)
    and then calls for proposals again at the same epoch with the next round
    number. After ``no_bid_rounds_max`` empty rounds it emits ``NoBids`` and forgets
    the task. A round in which some invitee refused as ``busy`` is not empty: the
    capability exists but every slot is taken, so the task waits for one
    (``busy_backoff_s`` doubling up to ``busy_backoff_max_s``) for as long as
    ``busy_wait_max_s`` before ``NoBids(busy=True)``.
``DECIDING``
    Bids are ranked by the scoring function (ties by node id) and an
    ``AwardDecision`` is emitted; the other bidders get ``cnet.reject`` at once, so
    the slots they held for this bid free up while the award is written. The
    driver proposes the ledger compare-and-set and reports with
    ``award_committed``: on success the winner gets ``cnet.accept``; when the CAS
    lost (another manager awarded this epoch first) it gets ``cnet.reject`` too.
``RUNNING``
    Awaiting the winner's ``cnet.inform`` or ``cnet.failure``, which become
    ``ResultReported`` / ``FailureReported`` for the driver to record in the ledger.
    Every ``progress_check_s`` the winner is asked (``cnet.query``) whether it
    still runs the task: ``cnet.progress(running=False)`` (it never got the
    accept), or ``progress_unanswered_max`` queries in a row without an answer,
    end the attempt with ``FailureReported``; a winner that finished answers with
    its result again. So a lost accept or result cannot leave the task awarded
    for ever. ``adopt`` puts a task awarded by another manager (taken over) in
    this phase.

A task whose contractor dies is reopened in the ledger by the driver, which then
calls ``start_auction`` with the new record: an auction at a newer epoch replaces
the old one. Messages of another epoch or round, from nodes not invited, or not
expected in the current phase are ignored and counted (``COUNTERS``); nothing a
peer sends raises. The ledger's fencing, not this filtering, is what keeps a stale
result out; the manager only avoids bothering the driver with it.

Purity: time comes only from ``start_auction(now)`` and ``tick(now)``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import BaseModel, ValidationError

from agents.contract_net.assignment import assign_places
from agents.contract_net.events import (
    AwardDecision,
    FailureReported,
    ManagerEvent,
    NoBids,
    ResultReported,
)
from agents.contract_net.ledger import TaskRecord, TaskState
from agents.contract_net.messages import (
    ACCEPT,
    CFP,
    EPOCH_MAX,
    FAILURE,
    INFORM,
    PROGRESS,
    PROPOSE,
    QUERY,
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
from agents.contract_net.scoring import Bid, ScoreFunction, rank_bids, weighted_score
from agents.contract_net.settings import ManagerSettings
from consensus.core import Incoming, Outgoing

__all__ = ["COUNTERS", "MANAGER_MESSAGE_KINDS", "AuctionPhase", "Manager"]

MANAGER_MESSAGE_KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {PROPOSE: Propose, REFUSE: Refuse, INFORM: InformResult, FAILURE: Failure,
     PROGRESS: Progress}
)
"""The kinds the manager consumes."""

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "auctions_started": "auctions started by start_auction",
        "auctions_superseded": "auctions replaced by one at a newer epoch of the same task",
        "starts_refused": "start_auction calls refused: task not open, same or older epoch",
        "starts_over_limit": "start_auction calls refused: auctions_max auctions in progress",
        "starts_invalid": "start_auction calls refused: the CFP would not be a valid payload",
        "candidates_dropped": "candidates beyond bids_per_auction_max, not invited",
        "cfps_sent": "calls for proposals sent",
        "bids_received": "proposals kept",
        "refusals_received": "refusals kept",
        "decisions_early": "auctions decided before the deadline: every invitee answered",
        "decisions_at_deadline": "auctions decided at the bid deadline",
        "rounds_without_bids": "auction rounds that ended without a single bid",
        "rounds_busy": "rounds without a bid in which a capable contractor was busy",
        "rounds_held": "rounds that waited for room in their capability's window",
        "rounds_outbid": "rounds whose bidders' places all went to other tasks of the batch",
        "batches_sent": "batches of two or more calls for proposals sent",
        "auctions_given_up": "auctions ended by NoBids (no_bid_rounds_max or busy_wait_max_s)",
        "awards_committed": "award_committed(ok=True): accept sent to the winner",
        "awards_lost": "award_committed(ok=False): the ledger CAS lost, all bidders rejected",
        "commits_unexpected": "award_committed for no auction awaiting that award",
        "results_received": "results from the awarded contractor, passed to the driver",
        "queries_sent": "progress queries sent to awarded contractors",
        "awards_dropped": "attempts ended: the winner does not hold the award or is silent",
        "auctions_adopted": "awarded tasks taken over from another manager (adopt)",
        "failures_received": "failures from the awarded contractor, passed to the driver",
        "auctions_cancelled": "auctions dropped by cancel",
        "messages_stale": "messages for an unknown task, another epoch or another round",
        "messages_uninvited": "answers from nodes not invited, or results from non-winners",
        "messages_duplicate": "second answers from one invitee in one round",
        "messages_unexpected": "messages not expected in the auction's phase, or unknown kinds",
    }
)
"""Every name in ``Manager.counters`` with what it counts; all start at zero."""


class AuctionPhase(enum.Enum):
    """Where one auction is; see the module docstring."""

    WAITING = "waiting"
    COLLECTING = "collecting"
    BACKOFF = "backoff"
    DECIDING = "deciding"
    RUNNING = "running"


@dataclass(slots=True)
class _Window:
    """One capability's auctions: how many may collect at once, how many do, and
    the WAITING ones in the order they start."""

    size: float
    collecting: int = 0
    waiting: deque[str] = field(default_factory=deque)


@dataclass(slots=True, eq=False)
class _Batch:
    """Auctions whose calls went out together and are decided together."""

    batch_id: int
    members: list[_Auction]
    capacities: dict[bytes, int] = field(default_factory=dict)
    """Bidder -> the most places it said it holds for the batch."""


@dataclass(slots=True, eq=False)
class _Auction:
    cfp: CallForProposals
    candidates: tuple[bytes, ...]
    phase: AuctionPhase
    due: float
    """COLLECTING: the bid deadline; BACKOFF: when the next round starts."""
    answers: dict[bytes, Bid | None] = field(default_factory=dict)
    """Invitee -> its bid, or None for a refusal (this round)."""
    busy_refusals: int = 0
    """Refusals marked busy this round."""
    round_started: float = 0.0
    task_input: bytes | None = None
    """The full input, handed to the winner with the award."""
    queries_unanswered: int = 0
    empty_rounds: int = 0
    busy_rounds: int = 0
    busy_since: float | None = None
    """When the current run of busy rounds began."""
    winner: bytes | None = None
    batch: _Batch | None = None
    """The batch of this round's call, once sent in one."""

    @property
    def epoch(self) -> int:
        return self.cfp.epoch

    def bidders(self) -> list[bytes]:
        return [node for node, bid in self.answers.items() if bid is not None]


class Manager:
    """Auctions of one node's tasks; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: bytes,
        settings: ManagerSettings | None = None,
        score: ScoreFunction | None = None,
        first_batch_id: int = 0,
    ) -> None:
        """``first_batch_id``: where batch ids start; a restarted manager should
        start elsewhere (the driver draws it at random), so that contractors do
        not mistake a new batch for one of its previous life."""
        self._node_id = node_id
        self._settings = settings if settings is not None else ManagerSettings()
        self._score = score if score is not None else weighted_score(self._settings.weights)
        self._auctions: dict[str, _Auction] = {}
        self._windows: dict[str, _Window] = {}
        self._admitting: set[str] = set()
        self._unsent: list[_Auction] = []
        self._next_batch_id = first_batch_id
        self._outbox: list[Outgoing] = []
        self._events: list[ManagerEvent] = []
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._now = 0.0  # the latest time given to start_auction or tick

    # -- driver interface ----------------------------------------------------------

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """``cnet.propose``, ``cnet.refuse``, ``cnet.inform``, ``cnet.failure``."""
        return MANAGER_MESSAGE_KINDS

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of what happened (see ``COUNTERS``), read-only."""
        return MappingProxyType(self._counters)

    def take_outbox(self) -> list[Outgoing]:
        """Remove and return the messages produced since the last call, in order;
        the calls for proposals of auctions started since then come last, batched
        (see the module docstring)."""
        if self._unsent:
            self._send_calls()
        outbox, self._outbox = self._outbox, []
        return outbox

    def take_events(self) -> list[ManagerEvent]:
        """Remove and return the events produced since the last call, in order."""
        events, self._events = self._events, []
        return events

    def phase(self, task_id: str) -> AuctionPhase | None:
        """The phase of ``task_id``'s auction, or None if the manager has none."""
        auction = self._auctions.get(task_id)
        return None if auction is None else auction.phase

    def epoch(self, task_id: str) -> int | None:
        """The epoch of ``task_id``'s auction, or None if the manager has none."""
        auction = self._auctions.get(task_id)
        return None if auction is None else auction.epoch

    def window(self, capability: str) -> float:
        """The capability's window: auctions of it that may collect bids at once."""
        window = self._windows.get(capability)
        return float(self._settings.window_initial) if window is None else window.size

    def round_started(self, task_id: str) -> float | None:
        """When the current round's call for proposals went out (the driver's clock),
        or None if the manager has no auction of ``task_id``."""
        auction = self._auctions.get(task_id)
        return None if auction is None else auction.round_started

    def __len__(self) -> int:
        """Auctions in progress (any phase)."""
        return len(self._auctions)

    # -- local requests ------------------------------------------------------------

    def start_auction(
        self,
        record: TaskRecord,
        candidates: Sequence[bytes],
        now: float,
        *,
        input_summary: str = "",
        constraints: Mapping[str, bool | int | float | str] | None = None,
    ) -> bool:
        """Call for proposals on the open task ``record`` from ``candidates``.

        Returns False (and counts why) when the task is not open, an auction at the
        same or a newer epoch is in progress, the table is full, or the CFP would
        be invalid. Candidates are deduplicated in order and cut to
        ``bids_per_auction_max``. With no candidates the round is empty at once.
        """
        self._now = max(self._now, now)
        existing = self._auctions.get(record.task_id)
        if record.state is not TaskState.OPEN or (
            existing is not None and existing.epoch >= record.epoch
        ):
            self._counters["starts_refused"] += 1
            return False
        if existing is None and len(self._auctions) >= self._settings.auctions_max:
            self._counters["starts_over_limit"] += 1
            return False
        try:
            cfp = CallForProposals(
                task_id=record.task_id,
                epoch=record.epoch,
                round=1,
                capability=record.capability,
                input_summary=input_summary,
                constraints=dict(constraints or {}),
                bid_window_ms=max(1, round(self._settings.bid_window_s * 1000)),
            )
        except ValidationError:
            self._counters["starts_invalid"] += 1
            return False
        if existing is not None:
            self._counters["auctions_superseded"] += 1
            self._forget(existing, "superseded by a newer epoch")
        invited = tuple(dict.fromkeys(candidates))
        limit = self._settings.bids_per_auction_max
        self._counters["candidates_dropped"] += max(0, len(invited) - limit)
        auction = _Auction(cfp, invited[:limit], AuctionPhase.WAITING, math.inf,
                           task_input=record.input)
        self._auctions[record.task_id] = auction
        self._counters["auctions_started"] += 1
        self._enter_window(auction, now)
        if existing is not None and existing.cfp.capability != auction.cfp.capability:
            self._admit(existing.cfp.capability, now)
        return True

    def award_committed(
        self, task_id: str, epoch: int, ok: bool, lease_id: int | None = None
    ) -> bool:
        """The driver's ledger award for ``AwardDecision(task_id, epoch)`` committed
        (``ok``) or lost its compare-and-set. False if no such award was awaited."""
        auction = self._auctions.get(task_id)
        if auction is None or auction.epoch != epoch or auction.phase is not AuctionPhase.DECIDING:
            self._counters["commits_unexpected"] += 1
            return False
        winner = auction.winner
        assert winner is not None, auction
        if not ok:
            self._counters["awards_lost"] += 1
            self._forget(auction, "award not committed")
            return True
        self._counters["awards_committed"] += 1
        accept = AcceptProposal(task_id=task_id, epoch=epoch, lease_id=lease_id,
                                input=auction.task_input)
        self._outbox.append(Outgoing(ACCEPT, (accept,), to_node=winner))
        auction.phase = AuctionPhase.RUNNING
        auction.due = self._now + self._settings.progress_check_s
        auction.answers = {}
        return True

    def adopt(self, record: TaskRecord, now: float) -> bool:
        """Watch the awarded task ``record`` as if this manager had awarded it (it was
        taken over from a manager that stopped): its result, failure or progress
        answers are handled as in ``RUNNING``. False (counted) if the task is not
        awarded or an auction of it is in progress here."""
        self._now = max(self._now, now)
        if (record.state is not TaskState.AWARDED or record.contractor is None
                or record.task_id in self._auctions):
            self._counters["starts_refused"] += 1
            return False
        cfp = CallForProposals(task_id=record.task_id, epoch=record.epoch,
                               capability=record.capability, bid_window_ms=1)
        auction = _Auction(cfp, (record.contractor,), AuctionPhase.RUNNING,
                           now + self._settings.progress_check_s, winner=record.contractor)
        self._auctions[record.task_id] = auction
        self._counters["auctions_adopted"] += 1
        return True

    def cancel(self, task_id: str) -> bool:
        """Forget ``task_id``'s auction (rejecting outstanding bids); False if none."""
        auction = self._auctions.get(task_id)
        if auction is None:
            return False
        self._counters["auctions_cancelled"] += 1
        self._forget(auction, "cancelled")
        self._admit(auction.cfp.capability, self._now)
        return True

    # -- step and tick -------------------------------------------------------------

    def step(self, message: Incoming) -> None:
        """Feed one received, verified message. Never raises on a schema-valid payload."""
        payload = message.payload
        if isinstance(payload, Propose | Refuse):
            self._on_answer(message.sender, payload)
        elif isinstance(payload, InformResult | Failure):
            self._on_outcome(message.sender, payload)
        elif isinstance(payload, Progress):
            self._on_progress(message.sender, payload)
        else:
            self._counters["messages_unexpected"] += 1

    def note_time(self, now: float) -> None:
        """Tell the manager the time without ticking: a round started or decided by
        the next ``step`` is stamped with it rather than with the last tick's."""
        self._now = max(self._now, now)

    def tick(self, now: float) -> None:
        """Advance time: decide auctions whose bid deadline passed, start due rounds."""
        self._now = max(self._now, now)
        for auction in [a for a in self._auctions.values() if a.due <= now]:
            if auction.phase is AuctionPhase.COLLECTING:
                if auction.batch is not None:
                    self._decide_batch(auction.batch, now, early=False)
                else:
                    self._counters["decisions_at_deadline"] += 1
                    self._decide(auction, now)
            elif auction.phase is AuctionPhase.BACKOFF:
                auction.cfp = auction.cfp.model_copy(update={"round": auction.cfp.round + 1})
                auction.phase = AuctionPhase.WAITING
                auction.due = math.inf
                self._enter_window(auction, now, first=True)
            elif auction.phase is AuctionPhase.RUNNING:
                self._check_progress(auction, now)

    def _check_progress(self, auction: _Auction, now: float) -> None:
        winner = auction.winner
        assert winner is not None
        if auction.queries_unanswered >= self._settings.progress_unanswered_max:
            self._drop_award(auction, f"no answer to {auction.queries_unanswered} progress "
                             "queries")
            return
        auction.queries_unanswered += 1
        auction.due = now + self._settings.progress_check_s
        self._counters["queries_sent"] += 1
        query = ProgressQuery(task_id=auction.cfp.task_id, epoch=auction.epoch)
        self._outbox.append(Outgoing(QUERY, (query,), to_node=winner))

    def _drop_award(self, auction: _Auction, reason: str) -> None:
        winner = auction.winner
        assert winner is not None
        self._counters["awards_dropped"] += 1
        del self._auctions[auction.cfp.task_id]
        self._events.append(FailureReported(auction.cfp.task_id, auction.epoch, winner, reason))

    def _on_progress(self, sender: bytes, payload: Progress) -> None:
        auction = self._auctions.get(payload.task_id)
        if auction is None or auction.epoch != payload.epoch:
            self._counters["messages_stale"] += 1
        elif auction.phase is not AuctionPhase.RUNNING:
            self._counters["messages_unexpected"] += 1
        elif sender != auction.winner:
            self._counters["messages_uninvited"] += 1
        elif payload.running:
            auction.queries_unanswered = 0
        else:
            self._drop_award(auction, "the contractor does not hold the award")

    # -- internals -----------------------------------------------------------------

    def _window_of(self, capability: str) -> _Window:
        window = self._windows.get(capability)
        if window is None:
            window = self._windows[capability] = _Window(float(self._settings.window_initial))
        return window

    def _enter_window(self, auction: _Auction, now: float, *, first: bool = False) -> None:
        """Queue a WAITING auction (at the front: a round that waited already) and
        start what the window has room for."""
        window = self._window_of(auction.cfp.capability)
        if first:
            window.waiting.appendleft(auction.cfp.task_id)
        else:
            window.waiting.append(auction.cfp.task_id)
        self._admit(auction.cfp.capability, now)
        if auction.phase is AuctionPhase.WAITING:
            self._counters["rounds_held"] += 1

    def _admit(self, capability: str, now: float) -> None:
        window = self._windows.get(capability)
        if window is None or capability in self._admitting:
            return  # called again from a round it started (one with no candidates)
        self._admitting.add(capability)
        try:
            while window.waiting and window.collecting < int(window.size):
                auction = self._auctions.get(window.waiting.popleft())
                if auction is None or auction.phase is not AuctionPhase.WAITING:
                    continue  # cancelled or replaced while it waited
                auction.phase = AuctionPhase.COLLECTING
                self._call(auction, now)
        finally:
            self._admitting.discard(capability)
        if not window.waiting and not window.collecting and window.size == float(
                self._settings.window_initial):
            del self._windows[capability]  # nothing to remember: keep the table small

    def _leave_collecting(self, auction: _Auction) -> None:
        window = self._windows.get(auction.cfp.capability)
        if window is not None and window.collecting > 0:
            window.collecting -= 1

    def _forget(self, auction: _Auction, reason: str) -> None:
        """Drop the auction in whatever phase, rejecting bids it still holds."""
        if auction.phase is AuctionPhase.COLLECTING:
            self._leave_collecting(auction)
        if auction.phase in (AuctionPhase.COLLECTING, AuctionPhase.DECIDING):
            self._reject_bidders(auction, reason)
        self._auctions.pop(auction.cfp.task_id, None)
        batch = auction.batch
        if batch is not None and auction.phase is AuctionPhase.COLLECTING:
            batch.members.remove(auction)
            auction.batch = None
            if batch.members and self._batch_answered(batch):
                self._decide_batch(batch, self._now, early=True)

    def _call(self, auction: _Auction, now: float) -> None:
        self._window_of(auction.cfp.capability).collecting += 1
        auction.round_started = now
        auction.answers = {}
        auction.busy_refusals = 0
        auction.batch = None
        auction.due = now + self._settings.bid_window_s
        if not auction.candidates:
            self._decide(auction, now)
            return
        self._unsent.append(auction)

    def _send_calls(self) -> None:
        """Send the calls of the auctions started since the last ``take_outbox``, in
        batches of up to ``batch_tasks_max`` (a batch of one is a plain call)."""
        unsent = [auction for auction in self._unsent
                  if self._auctions.get(auction.cfp.task_id) is auction
                  and auction.phase is AuctionPhase.COLLECTING]
        self._unsent = []
        size = self._settings.batch_tasks_max
        for start in range(0, len(unsent), size):
            chunk = unsent[start:start + size]
            if len(chunk) > 1:
                batch = _Batch(self._next_batch_id, chunk)
                self._next_batch_id = (self._next_batch_id + 1) % EPOCH_MAX
                self._counters["batches_sent"] += 1
                for auction in chunk:
                    auction.batch = batch
                    auction.cfp = auction.cfp.model_copy(
                        update={"batch_id": batch.batch_id, "batch_size": len(chunk)})
            for auction in chunk:
                for node in auction.candidates:
                    self._outbox.append(Outgoing(CFP, (auction.cfp,), to_node=node))
                self._counters["cfps_sent"] += len(auction.candidates)

    def _on_answer(self, sender: bytes, payload: Propose | Refuse) -> None:
        auction = self._auctions.get(payload.task_id)
        if auction is None or auction.epoch != payload.epoch:
            self._counters["messages_stale"] += 1
        elif auction.phase is not AuctionPhase.COLLECTING or payload.round != auction.cfp.round:
            # A late answer to an earlier round, or one after the decision.
            self._counters["messages_stale"] += 1
        elif sender not in auction.candidates:
            self._counters["messages_uninvited"] += 1
        elif sender in auction.answers:
            self._counters["messages_duplicate"] += 1
        else:
            batch = auction.batch
            if isinstance(payload, Propose):
                self._counters["bids_received"] += 1
                auction.answers[sender] = Bid(sender, payload.cost, payload.duration_s,
                                              payload.load, payload.confidence, payload.lease_id)
                if batch is not None:
                    batch.capacities[sender] = max(batch.capacities.get(sender, 0),
                                                   payload.capacity or 1)
            else:
                self._counters["refusals_received"] += 1
                auction.answers[sender] = None
                auction.busy_refusals += payload.busy
            # Every invitee answered: no reason to wait for the deadline.
            if batch is not None:
                if self._batch_answered(batch):
                    self._decide_batch(batch, self._now, early=True)
            elif len(auction.answers) == len(auction.candidates):
                self._counters["decisions_early"] += 1
                self._decide(auction, self._now)

    @staticmethod
    def _batch_answered(batch: _Batch) -> bool:
        return all(len(auction.answers) == len(auction.candidates) for auction in batch.members)

    def _decide_batch(self, batch: _Batch, now: float, *, early: bool) -> None:
        """Decide every auction of ``batch`` together (see the module docstring)."""
        members = [auction for auction in batch.members
                   if self._auctions.get(auction.cfp.task_id) is auction
                   and auction.phase is AuctionPhase.COLLECTING]
        batch.members = []
        self._counters["decisions_early" if early else "decisions_at_deadline"] += len(members)
        rows: list[dict[bytes, float]] = []
        bidding: list[_Auction] = []
        for auction in members:
            auction.batch = None
            self._leave_collecting(auction)
            bids = [bid for bid in auction.answers.values() if bid is not None]
            if bids:
                bidding.append(auction)
                rows.append({bid.node_id: self._score(bid, now) for bid in bids})
        places = assign_places(_finite_scores(rows), batch.capacities)
        chosen = dict(zip((id(auction) for auction in bidding), places, strict=True))
        try:
            for auction in members:
                winner = chosen.get(id(auction))
                self._decide_round(auction, now, winner=winner,
                                   outbid=id(auction) in chosen and winner is None)
        finally:
            for capability in dict.fromkeys(auction.cfp.capability for auction in members):
                self._admit(capability, now)

    def _decide(self, auction: _Auction, now: float) -> None:
        self._leave_collecting(auction)
        try:
            self._decide_round(auction, now)
        finally:
            self._admit(auction.cfp.capability, now)

    def _decide_round(self, auction: _Auction, now: float, *, winner: bytes | None = None,
                      outbid: bool = False) -> None:
        """Award the round to ``winner`` (default: the best-ranked bid), or back off:
        no bids, or (``outbid``) no place left for this task in its batch."""
        bids = [bid for bid in auction.answers.values() if bid is not None]
        window = self._window_of(auction.cfp.capability)
        if bids and not outbid:
            window.size = min(float(self._settings.window_max), window.size + 1 / window.size)
            ranked = rank_bids(bids, now, self._score)
            if winner is not None:  # the batch's choice first, the others in rank order
                ranked.sort(key=lambda bid: bid.node_id != winner)
            auction.winner = ranked[0].node_id
            auction.phase = AuctionPhase.DECIDING
            self._events.append(
                AwardDecision(auction.cfp.task_id, auction.epoch, ranked[0], tuple(ranked))
            )
            self._reject_bidders(auction, "another bid won", sparing=auction.winner)
            auction.answers = {auction.winner: ranked[0]}
            return
        settings = self._settings
        if outbid:
            self._counters["rounds_outbid"] += 1
            self._reject_bidders(auction, "the places bid went to other tasks of the batch")
        else:
            self._counters["rounds_without_bids"] += 1
        auction.phase = AuctionPhase.BACKOFF
        if auction.busy_refusals or outbid:
            self._counters["rounds_busy"] += not outbid
            window.size = max(1.0, window.size / 2)
            if auction.busy_since is None:
                auction.busy_since = now
            if now - auction.busy_since < settings.busy_wait_max_s:
                auction.busy_rounds += 1
                wait = settings.busy_backoff_s * 2 ** min(auction.busy_rounds - 1, 30)
                auction.due = now + min(wait, settings.busy_backoff_max_s)
                return
            self._give_up(auction, busy=True)
            return
        auction.busy_rounds = 0
        auction.busy_since = None
        auction.empty_rounds += 1
        if auction.empty_rounds >= settings.no_bid_rounds_max:
            self._give_up(auction, busy=False)
            return
        auction.due = now + settings.no_bid_backoff_s * 2 ** (auction.empty_rounds - 1)

    def _give_up(self, auction: _Auction, *, busy: bool) -> None:
        self._counters["auctions_given_up"] += 1
        del self._auctions[auction.cfp.task_id]
        rounds = auction.busy_rounds if busy else auction.empty_rounds
        self._events.append(NoBids(auction.cfp.task_id, auction.epoch, rounds, busy))

    def _on_outcome(self, sender: bytes, payload: InformResult | Failure) -> None:
        auction = self._auctions.get(payload.task_id)
        if auction is None or auction.epoch != payload.epoch:
            self._counters["messages_stale"] += 1
            return
        if auction.phase is not AuctionPhase.RUNNING:
            self._counters["messages_unexpected"] += 1
            return
        if sender != auction.winner:
            self._counters["messages_uninvited"] += 1
            return
        del self._auctions[payload.task_id]
        if isinstance(payload, InformResult):
            self._counters["results_received"] += 1
            self._events.append(
                ResultReported(
                    payload.task_id,
                    payload.epoch,
                    sender,
                    payload.result,
                    payload.digest,
                    payload.location,
                    payload.agent,
                )
            )
        else:
            self._counters["failures_received"] += 1
            self._events.append(
                FailureReported(payload.task_id, payload.epoch, sender, payload.reason)
            )

    def _reject_bidders(self, auction: _Auction, reason: str, sparing: bytes | None = None) -> None:
        reject = RejectProposal(task_id=auction.cfp.task_id, epoch=auction.epoch, reason=reason)
        for node in auction.bidders():
            if node != sparing:
                self._outbox.append(Outgoing(REJECT, (reject,), to_node=node))


def _finite_scores(rows: list[dict[bytes, float]]) -> list[dict[bytes, float]]:
    """``rows`` with scores that are not finite numbers (a plugged function's bug)
    replaced by one worse than every finite score, as ``rank_bids`` ranks them last."""
    finite = [score for row in rows for score in row.values() if math.isfinite(score)]
    worst = (max(finite) + abs(max(finite)) + 1.0) if finite else 1.0
    return [{node: score if math.isfinite(score) else worst for node, score in row.items()}
            for row in rows]
