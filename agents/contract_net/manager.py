"""The contract-net manager core: runs auctions for the tasks this node originates.

How this works
--------------
Per task the manager keeps one ``_Auction`` that moves through phases:

``COLLECTING``
    ``start_auction`` sent a ``cnet.cfp`` to every candidate (at most
    ``bids_per_auction_max``). Proposals and refusals of this epoch and round from
    invited nodes are kept, one per node. At the bid deadline (``tick``), or as
    soon as every invitee answered, the manager decides.
``BACKOFF``
    No bid at all: the manager waits (``no_bid_backoff_s``, doubling each round)
    and then calls for proposals again at the same epoch with the next round
    number. After ``no_bid_rounds_max`` empty rounds it emits ``NoBids`` and forgets
    the task.
``DECIDING``
    Bids are ranked by the scoring function (ties by node id) and an
    ``AwardDecision`` is emitted. The driver proposes the ledger compare-and-set
    and reports with ``award_committed``: on success the winner gets
    ``cnet.accept`` and the other bidders ``cnet.reject``; when the CAS lost (another
    manager awarded this epoch first) every bidder gets ``cnet.reject``.
``RUNNING``
    Awaiting the winner's ``cnet.inform`` or ``cnet.failure``, which become
    ``ResultReported`` / ``FailureReported`` for the driver to record in the ledger.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import BaseModel, ValidationError

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
    FAILURE,
    INFORM,
    PROPOSE,
    REFUSE,
    REJECT,
    AcceptProposal,
    CallForProposals,
    Failure,
    InformResult,
    Propose,
    Refuse,
    RejectProposal,
)
from agents.contract_net.scoring import Bid, ScoreFunction, rank_bids, weighted_score
from agents.contract_net.settings import ManagerSettings
from consensus.core import Incoming, Outgoing

__all__ = ["COUNTERS", "MANAGER_MESSAGE_KINDS", "AuctionPhase", "Manager"]

MANAGER_MESSAGE_KINDS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {PROPOSE: Propose, REFUSE: Refuse, INFORM: InformResult, FAILURE: Failure}
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
        "auctions_given_up": "auctions ended by NoBids after no_bid_rounds_max empty rounds",
        "awards_committed": "award_committed(ok=True): accept sent to the winner",
        "awards_lost": "award_committed(ok=False): the ledger CAS lost, all bidders rejected",
        "commits_unexpected": "award_committed for no auction awaiting that award",
        "results_received": "results from the awarded contractor, passed to the driver",
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

    COLLECTING = "collecting"
    BACKOFF = "backoff"
    DECIDING = "deciding"
    RUNNING = "running"


@dataclass(slots=True)
class _Auction:
    cfp: CallForProposals
    candidates: tuple[bytes, ...]
    phase: AuctionPhase
    due: float
    """COLLECTING: the bid deadline; BACKOFF: when the next round starts."""
    answers: dict[bytes, Bid | None] = field(default_factory=dict)
    """Invitee -> its bid, or None for a refusal (this round)."""
    empty_rounds: int = 0
    winner: bytes | None = None

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
    ) -> None:
        self._node_id = node_id
        self._settings = settings if settings is not None else ManagerSettings()
        self._score = score if score is not None else weighted_score(self._settings.weights)
        self._auctions: dict[str, _Auction] = {}
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
        """Remove and return the messages produced since the last call, in order."""
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
            self._reject_bidders(existing, "superseded by a newer epoch")
            del self._auctions[record.task_id]
        invited = tuple(dict.fromkeys(candidates))
        limit = self._settings.bids_per_auction_max
        self._counters["candidates_dropped"] += max(0, len(invited) - limit)
        auction = _Auction(cfp, invited[:limit], AuctionPhase.COLLECTING, now)
        self._auctions[record.task_id] = auction
        self._counters["auctions_started"] += 1
        self._call(auction, now)
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
            self._reject_bidders(auction, "award not committed")
            del self._auctions[task_id]
            return True
        self._counters["awards_committed"] += 1
        accept = AcceptProposal(task_id=task_id, epoch=epoch, lease_id=lease_id)
        self._outbox.append(Outgoing(ACCEPT, (accept,), to_node=winner))
        self._reject_bidders(auction, "another bid won", sparing=winner)
        auction.phase = AuctionPhase.RUNNING
        auction.answers = {}
        return True

    def cancel(self, task_id: str) -> bool:
        """Forget ``task_id``'s auction (rejecting outstanding bids); False if none."""
        auction = self._auctions.pop(task_id, None)
        if auction is None:
            return False
        self._counters["auctions_cancelled"] += 1
        if auction.phase in (AuctionPhase.COLLECTING, AuctionPhase.DECIDING):
            self._reject_bidders(auction, "cancelled")
        return True

    # -- step and tick -------------------------------------------------------------

    def step(self, message: Incoming) -> None:
        """Feed one received, verified message. Never raises on a schema-valid payload."""
        payload = message.payload
        if isinstance(payload, Propose | Refuse):
            self._on_answer(message.sender, payload)
        elif isinstance(payload, InformResult | Failure):
            self._on_outcome(message.sender, payload)
        else:
            self._counters["messages_unexpected"] += 1

    def tick(self, now: float) -> None:
        """Advance time: decide auctions whose bid deadline passed, start due rounds."""
        self._now = max(self._now, now)
        for auction in [a for a in self._auctions.values() if a.due <= now]:
            if auction.phase is AuctionPhase.COLLECTING:
                self._counters["decisions_at_deadline"] += 1
                self._decide(auction, now)
            elif auction.phase is AuctionPhase.BACKOFF:
                auction.cfp = auction.cfp.model_copy(update={"round": auction.cfp.round + 1})
                auction.phase = AuctionPhase.COLLECTING
                self._call(auction, now)

    # -- internals -----------------------------------------------------------------

    def _call(self, auction: _Auction, now: float) -> None:
        auction.answers = {}
        auction.due = now + self._settings.bid_window_s
        for node in auction.candidates:
            self._outbox.append(Outgoing(CFP, (auction.cfp,), to_node=node))
        self._counters["cfps_sent"] += len(auction.candidates)
        if not auction.candidates:
            self._decide(auction, now)

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
            if isinstance(payload, Propose):
                self._counters["bids_received"] += 1
                auction.answers[sender] = Bid(
                    sender, payload.cost, payload.duration_s, payload.load, payload.confidence
                )
            else:
                self._counters["refusals_received"] += 1
                auction.answers[sender] = None
            if len(auction.answers) == len(auction.candidates):
                self._counters["decisions_early"] += 1
                # Every invitee answered: no reason to wait for the deadline.
                self._decide(auction, self._now)

    def _decide(self, auction: _Auction, now: float) -> None:
        bids = [bid for bid in auction.answers.values() if bid is not None]
        if bids:
            ranked = tuple(rank_bids(bids, now, self._score))
            auction.winner = ranked[0].node_id
            auction.phase = AuctionPhase.DECIDING
            self._events.append(
                AwardDecision(auction.cfp.task_id, auction.epoch, ranked[0], ranked)
            )
            return
        self._counters["rounds_without_bids"] += 1
        auction.empty_rounds += 1
        if auction.empty_rounds >= self._settings.no_bid_rounds_max:
            self._counters["auctions_given_up"] += 1
            del self._auctions[auction.cfp.task_id]
            self._events.append(NoBids(auction.cfp.task_id, auction.epoch, auction.empty_rounds))
            return
        auction.phase = AuctionPhase.BACKOFF
        auction.due = now + self._settings.no_bid_backoff_s * 2 ** (auction.empty_rounds - 1)

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
