"""Contract net: messages, the task ledger's transitions, scoring, and the two cores.

The ledger is tested against the real ``KVStore`` (requests applied in order as
Raft would), so the compare-and-set semantics are the real ones. The cores are
driven by hand: messages are delivered between a manager and contractors by a
tiny loop, with ticks in between.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from agents.contract_net import ledger
from agents.contract_net.contractor import Contractor, Estimate, fixed_estimator
from agents.contract_net.events import (
    AwardDecision,
    FailureReported,
    ManagerEvent,
    NoBids,
    ResultReported,
    StartTask,
)
from agents.contract_net.ledger import (
    BidRecord,
    LedgerError,
    Refusal,
    RefusalReason,
    TaskRecord,
    TaskState,
    Transition,
    decode_record,
    encode_record,
)
from agents.contract_net.manager import AuctionPhase, Manager
from agents.contract_net.messages import (
    ACCEPT,
    CFP,
    FAILURE,
    INFORM,
    MESSAGE_KINDS,
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
from agents.contract_net.scoring import Bid, ScoringWeights, rank_bids, weighted_score
from agents.contract_net.settings import ContractorSettings, ManagerSettings
from consensus.core import Incoming, Outgoing
from consensus.kvstore import KVStore, Put, Request, Response, encode_request
from mesh.errors import ConfigError

A, B, C, M = b"node-a", b"node-b", b"node-c", b"manager"


# ------------------------------------------------------------------ helpers


class Ledger:
    """A real KV store applying requests in log order, as every Raft replica does."""

    def __init__(self) -> None:
        self.store = KVStore()
        self.index = 0
        self.seqs = itertools.count(1)

    def apply(self, transition: Transition) -> Response:
        self.index += 1
        request = Request("tester", next(self.seqs), 0, transition.command)
        return self.store.apply(self.index, encode_request(request))

    def read(self, task_id: str) -> tuple[TaskRecord, int]:
        item = self.store.get(ledger.task_key(task_id))
        assert item is not None
        return decode_record(item.value), item.version


def created(task_id: str = "t1", max_attempts: int = 3) -> tuple[Ledger, TaskRecord, int]:
    kv = Ledger()
    assert kv.apply(ledger.create(task_id, "summarize", b"text", max_attempts=max_attempts)).ok
    record, version = kv.read(task_id)
    return kv, record, version


def must(result: Transition | Refusal) -> Transition:
    assert isinstance(result, Transition), result
    return result


def refused(result: Transition | Refusal) -> RefusalReason:
    assert isinstance(result, Refusal), result
    return result.reason


def awarded(kv: Ledger, task_id: str = "t1", to: bytes = A) -> tuple[TaskRecord, int]:
    record, version = kv.read(task_id)
    step = ledger.award(record, version, epoch=record.epoch, contractor=to, lease_id=7)
    assert kv.apply(must(step)).ok
    return kv.read(task_id)


def deliver(
    outgoing: Iterable[Outgoing], sender: bytes, cores: dict[bytes, Manager | Contractor]
) -> None:
    for message in outgoing:
        assert message.to_node is not None
        for payload in message.payloads:
            cores[message.to_node].step(Incoming(sender, message.kind, payload))


def record(task_id: str = "t1", epoch: int = 1) -> TaskRecord:
    return TaskRecord(task_id, "summarize", b"text", epoch=epoch)


def kinds_to(outbox: Sequence[Outgoing]) -> list[tuple[str, bytes | None]]:
    return [(message.kind, message.to_node) for message in outbox]


def propose(task_id: str = "t1", epoch: int = 1, round: int = 1, cost: float = 1.0) -> Propose:
    return Propose(
        task_id=task_id,
        epoch=epoch,
        round=round,
        cost=cost,
        duration_s=1.0,
        load=0.0,
        confidence=1.0,
    )


# ----------------------------------------------------------------- messages


def test_every_kind_maps_to_its_model() -> None:
    assert MESSAGE_KINDS[CFP] is CallForProposals
    assert set(MESSAGE_KINDS) == {CFP, PROPOSE, REFUSE, ACCEPT, REJECT, INFORM, FAILURE,
                                  QUERY, PROGRESS}
    assert all(kind.startswith("cnet.") for kind in MESSAGE_KINDS)


def test_payloads_are_frozen_and_closed() -> None:
    cfp = CallForProposals(
        task_id="t",
        epoch=1,
        capability="x",
        bid_window_ms=500,
        constraints={"gpu": True, "ram_gb": 8, "lang": "en"},
    )
    with pytest.raises(ValidationError):
        cfp.epoch = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        CallForProposals.model_validate({**cfp.model_dump(), "surprise": 1})
    assert CallForProposals.model_validate(cfp.model_dump()) == cfp


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (CallForProposals, {"task_id": "", "epoch": 1, "capability": "x", "bid_window_ms": 1}),
        (CallForProposals, {"task_id": "t", "epoch": 0, "capability": "x", "bid_window_ms": 1}),
        (CallForProposals, {"task_id": "t", "epoch": 1, "capability": "x", "bid_window_ms": 0}),
        (
            CallForProposals,
            {"task_id": "t" * 129, "epoch": 1, "capability": "x", "bid_window_ms": 1},
        ),
        (
            CallForProposals,
            {
                "task_id": "t",
                "epoch": 1,
                "capability": "x",
                "bid_window_ms": 1,
                "constraints": {f"k{i}": i for i in range(33)},
            },
        ),
        (
            Propose,
            {
                "task_id": "t",
                "epoch": 1,
                "cost": -1.0,
                "duration_s": 1.0,
                "load": 0.0,
                "confidence": 1.0,
            },
        ),
        (
            Propose,
            {
                "task_id": "t",
                "epoch": 1,
                "cost": float("nan"),
                "duration_s": 1.0,
                "load": 0.0,
                "confidence": 1.0,
            },
        ),
        (
            Propose,
            {
                "task_id": "t",
                "epoch": 1,
                "cost": 1.0,
                "duration_s": 1.0,
                "load": 0.0,
                "confidence": 1.5,
            },
        ),
        (Refuse, {"task_id": "t", "epoch": 1, "reason": "r" * 257}),
        (InformResult, {"task_id": "t", "epoch": 1}),
        (
            InformResult,
            {"task_id": "t", "epoch": 1, "result": b"x", "digest": b"d", "location": "kv:x"},
        ),
        (InformResult, {"task_id": "t", "epoch": 1, "digest": b"d"}),
        (AcceptProposal, {"task_id": "t", "epoch": 1, "lease_id": 0}),
        (Failure, {"task_id": "t", "epoch": "1"}),
    ],
)
def test_malformed_payloads_are_refused(model: type[BaseModel], fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(fields)


def test_a_result_is_inline_or_a_digest_with_its_location() -> None:
    assert InformResult(task_id="t", epoch=1, result=b"").result == b""
    remote = InformResult(task_id="t", epoch=1, digest=b"\x01" * 32, location="kv:results/t")
    assert remote.result is None
    assert RejectProposal(task_id="t", epoch=1).reason == ""


# ------------------------------------------------------------------- ledger


def test_record_bytes_round_trip_and_are_canonical() -> None:
    full = TaskRecord(
        "t",
        "cap",
        b"in",
        TaskState.DONE,
        3,
        A,
        None,
        2,
        5,
        None,
        b"d" * 32,
        "kv:r",
        ("boom", "lost"),
    )
    data = encode_record(full)
    assert decode_record(data) == full
    assert encode_record(decode_record(data)) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "not valid msgpack"),
        (encode_record(record())[:-1], "not valid msgpack"),
        (b"\x90", "must be a list"),
        (b"\x91\x02", "format 2 task record has 15 items"),
        ("text", "must be bytes"),
    ],
)
def test_bad_record_bytes_name_the_fault(data: bytes, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        decode_record(data)


def test_an_award_keeps_its_bids_and_format_1_records_still_read() -> None:
    import msgpack

    bids = (BidRecord(B, 1.0, 2.0, 0.25, 0.9), BidRecord(A, 3.0, 2.0, 0.0, 1.0))
    step = ledger.award(record(), 1, epoch=1, contractor=B, lease_id=7, bids=bids)
    assert isinstance(step, Transition)
    assert decode_record(encode_record(step.record)).bids == bids
    old = msgpack.unpackb(encode_record(record()))[:14]
    old[0] = 1
    assert decode_record(msgpack.packb(old, use_bin_type=True)) == record()
    format_2 = msgpack.unpackb(encode_record(step.record))[:15]
    format_2[0] = 2
    assert decode_record(msgpack.packb(format_2, use_bin_type=True)).bids == bids
    done = ledger.complete(step.record, 2, epoch=1, contractor=B, result=b"{}", agent="counter")
    assert isinstance(done, Transition)
    assert decode_record(encode_record(done.record)).agent == "counter"


def test_bad_record_fields_name_the_fault() -> None:
    import msgpack

    good = msgpack.unpackb(encode_record(record()))
    for position, value, message in [
        (0, 4, "format"),
        (0, 1, "format 1 task record has 14 items"),
        (0, 2, "format 2 task record has 15 items"),
        (15, 7, "agent must be a string"),
        (4, "sleeping", "unknown task state"),
        (5, 0, "epoch"),
        (1, "", "task_id must not be empty"),
        (8, 9, "attempts"),
        (13, "x", "failure_reasons"),
        (14, "x", "bids must be a list"),
        (14, [[A, 1.0, 1.0, 0.0]], "a bid must be a list of 5"),
        (14, [[A, -1.0, 1.0, 0.0, 1.0]], "bid cost"),
        (14, [[A, 1.0, 1.0, 0.0, 1.0]] * 65, "at most 64"),
    ]:
        items = list(good)
        items[position] = value
        with pytest.raises(LedgerError, match=message):
            decode_record(msgpack.packb(items, use_bin_type=True))


@pytest.mark.parametrize(
    "changes",
    [
        {"state": TaskState.AWARDED},  # no contractor, no lease
        {"state": TaskState.OPEN, "contractor": A},
        {"state": TaskState.OPEN, "lease_id": 3},
        {"state": TaskState.DONE},  # no result
        {"state": TaskState.OPEN, "result": b"x"},
        {"state": TaskState.DONE, "result_digest": b"d"},  # digest without location
        {"max_attempts": 0},
        {"max_attempts": 101},
    ],
)
def test_inconsistent_records_cannot_be_built(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"task_id": "t", "capability": "c", "input": b"", **changes}
    with pytest.raises(LedgerError):
        TaskRecord(**fields)  # type: ignore[arg-type]


def test_create_expects_the_key_absent() -> None:
    kv, first, version = created()
    assert (first.state, first.epoch, first.attempts, version) == (TaskState.OPEN, 1, 0, 1)
    again = kv.apply(ledger.create("t1", "summarize", b"other"))
    assert not again.ok and again.version == 1
    with pytest.raises(LedgerError, match="task_id"):
        ledger.create("", "summarize", b"")


def test_create_with_an_owner_claims_the_task_in_the_same_write() -> None:
    kv = Ledger()
    assert kv.apply(ledger.create("t1", "summarize", b"text", owner=A)).ok
    owner = kv.store.get(ledger.OWNER_PREFIX + "t1")
    assert owner is not None and owner.value == A
    # A second create (a retry through another node) changes nothing, owner included.
    again = kv.apply(ledger.create("t1", "summarize", b"text", owner=B))
    assert not again.ok
    owner = kv.store.get(ledger.OWNER_PREFIX + "t1")
    assert owner is not None and owner.value == A
    with pytest.raises(LedgerError, match="owner"):
        ledger.create("t2", "summarize", b"", owner=b"")


def test_award_only_from_open_at_that_epoch() -> None:
    kv, first, version = created()
    step = must(ledger.award(first, version, epoch=1, contractor=A, lease_id=9))
    assert step.command.key == "task/t1" and step.command.expect_version == version
    assert step.command.lease_id is None  # the record must outlive the lease
    assert (step.record.state, step.record.contractor, step.record.lease_id) == (
        TaskState.AWARDED,
        A,
        9,
    )
    assert refused(ledger.award(first, version, epoch=2, contractor=A, lease_id=9)) is (
        RefusalReason.FUTURE_EPOCH
    )
    assert kv.apply(step).ok
    current, version = kv.read("t1")
    assert refused(ledger.award(current, version, epoch=1, contractor=B, lease_id=9)) is (
        RefusalReason.WRONG_STATE
    )


def test_award_race_from_one_version_has_one_winner() -> None:
    kv, first, version = created()
    one = must(ledger.award(first, version, epoch=1, contractor=A, lease_id=1))
    two = must(ledger.award(first, version, epoch=1, contractor=B, lease_id=2))
    assert kv.apply(one).ok
    lost = kv.apply(two)
    assert not lost.ok and lost.version == version + 1
    assert kv.read("t1")[0].contractor == A


def test_complete_by_the_contractor_at_its_epoch() -> None:
    kv, _, _ = created()
    current, version = awarded(kv, to=A)
    assert refused(ledger.complete(current, version, epoch=1, contractor=B, result=b"r")) is (
        RefusalReason.NOT_CONTRACTOR
    )
    done = must(ledger.complete(current, version, epoch=1, contractor=A, result=b"r"))
    assert kv.apply(done).ok
    final, version = kv.read("t1")
    assert (final.state, final.result, final.lease_id, final.contractor) == (
        TaskState.DONE,
        b"r",
        None,
        A,
    )
    # Recorded once: a second report is refused.
    assert refused(ledger.complete(final, version, epoch=1, contractor=A, result=b"s")) is (
        RefusalReason.FINAL
    )


def test_the_unfinished_index_follows_the_records() -> None:
    kv, _, _ = created()
    assert kv.store.get("unfinished/t1") is not None
    assert kv.apply(ledger.create("t2", "summarize", b"x")).ok
    kv.store.apply(kv.index + 1, encode_request(Request("o", 1, 0, Put("owner/t1", b"me"))))
    kv.index += 1
    current, version = awarded(kv, to=A)
    reopened = must(ledger.reopen(current, version, epoch=1, reason="lease ended"))
    assert kv.apply(reopened).ok and kv.store.get("unfinished/t1") is not None
    current, version = awarded(kv, to=B)
    assert kv.apply(must(ledger.complete(current, version, epoch=2, contractor=B,
                                         result=b"r"))).ok
    # Final: out of the index, and its owner key goes too.
    assert kv.store.get("unfinished/t1") is None and kv.store.get("owner/t1") is None
    current, version = kv.read("t2")
    assert kv.apply(must(ledger.cancel(current, version, reason="no longer needed"))).ok
    assert [item.key for item in kv.store.range("unfinished/", 10)] == []


def test_complete_with_a_digest_and_an_invalid_result() -> None:
    kv, _, _ = created()
    current, version = awarded(kv)
    digest = must(
        ledger.complete(
            current, version, epoch=1, contractor=A, digest=b"d" * 32, location="kv:results/t1"
        )
    )
    assert digest.record.result_location == "kv:results/t1"
    assert refused(ledger.complete(current, version, epoch=1, contractor=A)) is (
        RefusalReason.INVALID
    )
    assert (
        refused(ledger.complete(current, version, epoch=1, contractor=A, digest=b"d"))
        is RefusalReason.INVALID
    )


def test_stale_result_is_fenced_off() -> None:
    kv, _, _ = created()
    old, old_version = awarded(kv, to=A)
    assert kv.apply(must(ledger.reopen(old, old_version, epoch=1))).ok
    awarded(kv, to=B)
    current, version = kv.read("t1")
    assert current.epoch == 2
    assert refused(ledger.complete(current, version, epoch=1, contractor=A, result=b"late")) is (
        RefusalReason.STALE_EPOCH
    )
    # Even a write prepared from the old read loses its compare-and-set.
    stale = must(ledger.complete(old, old_version, epoch=1, contractor=A, result=b"late"))
    assert not kv.apply(stale).ok


def test_failures_reopen_at_the_next_epoch_then_fail() -> None:
    kv, _, _ = created(max_attempts=2)
    current, version = awarded(kv)
    assert kv.apply(must(ledger.fail_attempt(current, version, epoch=1, reason="oom"))).ok
    current, version = kv.read("t1")
    assert (current.state, current.epoch, current.attempts, current.contractor) == (
        TaskState.OPEN,
        2,
        1,
        None,
    )
    assert refused(ledger.fail_attempt(current, version, epoch=1, reason="again")) is (
        RefusalReason.STALE_EPOCH
    )
    # A round with no bids ends an attempt too (from open).
    assert kv.apply(must(ledger.fail_attempt(current, version, epoch=2, reason="no bids"))).ok
    final, _ = kv.read("t1")
    assert (final.state, final.attempts, final.failure_reasons) == (
        TaskState.FAILED,
        2,
        ("oom", "no bids"),
    )


def test_reopen_only_an_awarded_task_and_reasons_are_clipped() -> None:
    kv, current, version = created()
    assert refused(ledger.reopen(current, version, epoch=1)) is RefusalReason.WRONG_STATE
    current, version = awarded(kv)
    step = must(ledger.reopen(current, version, epoch=1, reason="x" * 1000))
    assert len(step.record.failure_reasons[0]) == 256
    assert step.record.state is TaskState.OPEN and step.record.epoch == 2


def test_cancel_from_open_or_awarded_only() -> None:
    kv, current, version = created()
    step = must(ledger.cancel(current, version))
    assert step.record.state is TaskState.CANCELLED
    current, version = awarded(kv)
    assert kv.apply(must(ledger.cancel(current, version, reason="user"))).ok
    final, version = kv.read("t1")
    assert final.failure_reasons == ("user",) and final.lease_id is None
    assert refused(ledger.cancel(final, version)) is RefusalReason.FINAL
    assert refused(ledger.award(final, version, epoch=1, contractor=A, lease_id=1)) is (
        RefusalReason.FINAL
    )


def test_a_bad_version_is_refused_not_raised() -> None:
    _, current, _ = created()
    assert refused(ledger.award(current, 0, epoch=1, contractor=A, lease_id=1)) is (
        RefusalReason.INVALID
    )
    assert refused(ledger.award(current, 1, epoch=1, contractor=b"", lease_id=1)) is (
        RefusalReason.INVALID
    )


# ------------------------------------------------------------------ scoring


def test_default_score_prefers_cheap_quick_idle() -> None:
    score = weighted_score(ScoringWeights())
    cheap = Bid(A, cost=1.0, duration_s=1.0, load=0.0, confidence=1.0)
    dear = Bid(B, cost=9.0, duration_s=1.0, load=0.0, confidence=1.0)
    loaded = Bid(C, cost=1.0, duration_s=1.0, load=2.0, confidence=1.0)
    assert rank_bids([loaded, dear, cheap], 10.0, score) == [cheap, loaded, dear]


def test_ties_break_by_node_id_and_nan_ranks_last() -> None:
    bids = [Bid(node, 1.0, 1.0, 0.0, 1.0) for node in (C, A, B)]
    assert [bid.node_id for bid in rank_bids(bids, 0.0, weighted_score(ScoringWeights()))] == [
        A,
        B,
        C,
    ]

    def odd(bid: Bid, now: float) -> float:
        return float("nan") if bid.node_id == A else 1.0

    assert [bid.node_id for bid in rank_bids(bids, 0.0, odd)] == [B, C, A]


def test_doubt_weight_prefers_confident_bids() -> None:
    score = weighted_score(ScoringWeights(cost=0.0, finish_time=0.0, load=0.0, doubt=1.0))
    sure, unsure = Bid(B, 9.0, 9.0, 0.0, 1.0), Bid(A, 1.0, 1.0, 0.0, 0.2)
    assert rank_bids([unsure, sure], 0.0, score)[0] is sure


@pytest.mark.parametrize(
    "build",
    [
        lambda: ScoringWeights(cost=-1.0),
        lambda: ScoringWeights(load=float("inf")),
        lambda: ManagerSettings(auctions_max=0),
        lambda: ManagerSettings(bid_window_s=0.0),
        lambda: ContractorSettings(tasks_running_max=0),
        lambda: ContractorSettings(award_grace_s=float("nan")),
    ],
)
def test_bad_settings_name_the_value(build: object) -> None:
    with pytest.raises(ConfigError, match=r"\("):
        build()  # type: ignore[operator]


# ------------------------------------------------------------------ manager


def started(candidates: Sequence[bytes] = (A, B, C), **overrides: object) -> Manager:
    manager = Manager(node_id=M, settings=ManagerSettings(**overrides))  # type: ignore[arg-type]
    assert manager.start_auction(record(), candidates, 0.0, input_summary="a text")
    return manager


def test_start_sends_one_cfp_per_candidate() -> None:
    manager = started((A, B, A, C))
    out = manager.take_outbox()
    assert kinds_to(out) == [(CFP, A), (CFP, B), (CFP, C)]
    cfp = out[0].payloads[0]
    assert isinstance(cfp, CallForProposals)
    assert (cfp.task_id, cfp.epoch, cfp.round, cfp.bid_window_ms) == ("t1", 1, 1, 2000)
    assert manager.phase("t1") is AuctionPhase.COLLECTING


def test_decides_as_soon_as_everyone_answered() -> None:
    manager = started()
    manager.take_outbox()
    manager.step(Incoming(A, PROPOSE, propose(cost=3.0)))
    manager.step(Incoming(B, REFUSE, Refuse(task_id="t1", epoch=1, reason="busy")))
    assert manager.take_events() == []
    manager.step(Incoming(C, PROPOSE, propose(cost=1.0)))
    [decision] = manager.take_events()
    assert isinstance(decision, AwardDecision)
    assert decision.winner.node_id == C and [b.node_id for b in decision.ranked] == [C, A]
    assert manager.counters["decisions_early"] == 1
    assert manager.phase("t1") is AuctionPhase.DECIDING


def test_decides_at_the_deadline_with_the_bids_it_has() -> None:
    manager = started()
    manager.step(Incoming(B, PROPOSE, propose()))
    manager.tick(1.9)
    assert manager.take_events() == []
    manager.tick(2.0)
    [decision] = manager.take_events()
    assert isinstance(decision, AwardDecision) and decision.winner.node_id == B
    manager.step(Incoming(A, PROPOSE, propose()))  # too late
    assert manager.counters["messages_stale"] == 1


def test_the_decision_rejects_the_losers_and_the_commit_accepts_the_winner() -> None:
    manager = started()
    manager.take_outbox()
    for node, cost in ((A, 2.0), (B, 1.0), (C, 3.0)):
        manager.step(Incoming(node, PROPOSE, propose(cost=cost)))
    manager.take_events()
    # The losers' slots free up while the award is written.
    assert kinds_to(manager.take_outbox()) == [(REJECT, A), (REJECT, C)]
    assert not manager.award_committed("t1", 2, True)  # wrong epoch
    assert manager.award_committed("t1", 1, True, lease_id=44)
    out = manager.take_outbox()
    assert kinds_to(out) == [(ACCEPT, B)]
    assert out[0].payloads[0] == AcceptProposal(task_id="t1", epoch=1, lease_id=44,
                                                input=b"text")  # the winner needs no read
    assert manager.phase("t1") is AuctionPhase.RUNNING
    assert manager.counters["commits_unexpected"] == 1


def test_lost_award_rejects_everyone() -> None:
    manager = started((A, B))
    manager.take_outbox()
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.step(Incoming(B, PROPOSE, propose()))
    assert manager.award_committed("t1", 1, False)
    assert kinds_to(manager.take_outbox()) == [(REJECT, B), (REJECT, A)]
    assert manager.phase("t1") is None


def test_results_from_the_winner_reach_the_driver() -> None:
    manager = started((A, B))
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.step(Incoming(B, PROPOSE, propose(cost=9.0)))
    manager.award_committed("t1", 1, True)
    manager.take_events()
    result = InformResult(task_id="t1", epoch=1, result=b"42")
    manager.step(Incoming(B, INFORM, result))  # not the winner
    manager.step(Incoming(A, INFORM, result.model_copy(update={"epoch": 2})))  # no such epoch
    manager.step(Incoming(A, INFORM, result))
    assert manager.take_events() == [ResultReported("t1", 1, A, b"42", None, None)]
    assert manager.counters["messages_uninvited"] == 1
    assert manager.counters["messages_stale"] == 1
    assert len(manager) == 0


def awarded_to_a(**overrides: object) -> Manager:
    manager = started((A, B), progress_check_s=1.0, progress_unanswered_max=2, **overrides)
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.step(Incoming(B, PROPOSE, propose(cost=9.0)))
    manager.award_committed("t1", 1, True)
    manager.take_events()
    manager.take_outbox()
    return manager


def test_a_running_award_is_queried_and_a_busy_winner_keeps_it() -> None:
    manager = awarded_to_a()
    manager.tick(0.9)
    assert manager.take_outbox() == []
    for now in (1.0, 2.0, 3.0):  # answered every time: never given up
        manager.tick(now)
        [query] = manager.take_outbox()
        assert query.kind == QUERY and query.to_node == A
        assert query.payloads[0] == ProgressQuery(task_id="t1", epoch=1)
        manager.step(Incoming(A, PROGRESS, Progress(task_id="t1", epoch=1, running=True)))
    assert manager.take_events() == [] and manager.phase("t1") is AuctionPhase.RUNNING
    manager.step(Incoming(B, PROGRESS, Progress(task_id="t1", epoch=1, running=False)))
    assert manager.counters["messages_uninvited"] == 1 and manager.take_events() == []


def test_a_winner_without_the_award_or_silent_ends_the_attempt() -> None:
    manager = awarded_to_a()
    manager.tick(1.0)
    manager.step(Incoming(A, PROGRESS, Progress(task_id="t1", epoch=1, running=False)))
    assert manager.take_events() == [
        FailureReported("t1", 1, A, "the contractor does not hold the award")]
    assert manager.phase("t1") is None
    silent = awarded_to_a()
    for now in (1.0, 2.0, 3.0):
        silent.tick(now)
    assert silent.take_events() == [FailureReported("t1", 1, A, "no answer to 2 progress "
                                                                "queries")]
    assert silent.counters["queries_sent"] == 2 and silent.counters["awards_dropped"] == 1


def test_an_adopted_award_is_watched_and_its_result_reported() -> None:
    manager = Manager(node_id=M, settings=ManagerSettings(progress_check_s=1.0))
    awarded = TaskRecord("t1", "summarize", b"text", TaskState.AWARDED, 2, contractor=A,
                         lease_id=5)
    assert manager.adopt(awarded, 10.0)
    assert not manager.adopt(awarded, 10.0)  # already watched
    assert not manager.adopt(record("t2"), 10.0)  # open, not awarded
    manager.tick(11.0)
    [query] = manager.take_outbox()
    assert query.payloads[0] == ProgressQuery(task_id="t1", epoch=2)
    manager.step(Incoming(A, INFORM, InformResult(task_id="t1", epoch=2, result=b"42")))
    assert manager.take_events() == [ResultReported("t1", 2, A, b"42", None, None)]


def test_a_contractor_answers_queries_from_what_it_holds() -> None:
    worker = contractor(results_kept_max=1)
    for task in ("t1", "t2"):
        worker.step(Incoming(M, CFP, cfp(task)))
        worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id=task, epoch=1)))
    worker.take_outbox()
    worker.step(Incoming(B, QUERY, ProgressQuery(task_id="t1", epoch=1)))  # a new manager
    [running] = worker.take_outbox()
    assert running.to_node == B and running.payloads[0] == Progress(task_id="t1", epoch=1,
                                                                   running=True)
    assert worker.task_finished("t1", 1, result=b"one")
    assert worker.task_finished("t2", 1, result=b"two")
    worker.take_outbox()
    worker.step(Incoming(B, QUERY, ProgressQuery(task_id="t2", epoch=1)))
    [again] = worker.take_outbox()  # finished: the result once more
    assert again.kind == INFORM and again.to_node == B and again.payloads[0].result == b"two"
    worker.step(Incoming(B, QUERY, ProgressQuery(task_id="t1", epoch=1)))  # forgotten: 1 kept
    worker.step(Incoming(B, QUERY, ProgressQuery(task_id="t9", epoch=1)))  # never held
    assert [o.payloads[0] for o in worker.take_outbox()] == [
        Progress(task_id="t1", epoch=1, running=False),
        Progress(task_id="t9", epoch=1, running=False)]
    assert worker.counters["results_resent"] == 1 and worker.counters["queries_received"] == 4


def test_failure_from_the_winner_reaches_the_driver() -> None:
    manager = started((A,))
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.award_committed("t1", 1, True)
    manager.take_events()
    manager.step(Incoming(A, FAILURE, Failure(task_id="t1", epoch=1, reason="oom")))
    assert manager.take_events() == [FailureReported("t1", 1, A, "oom")]


def test_no_bids_backs_off_then_gives_up() -> None:
    manager = started((A,), no_bid_rounds_max=3, bid_window_s=1.0, no_bid_backoff_s=1.0)
    manager.take_outbox()
    manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1)))  # round 1 over at once
    assert manager.phase("t1") is AuctionPhase.BACKOFF
    manager.tick(0.9)
    assert manager.take_outbox() == []
    manager.tick(1.0)
    [again] = manager.take_outbox()
    assert isinstance(again.payloads[0], CallForProposals) and again.payloads[0].round == 2
    manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1, round=1)))  # old round
    assert manager.counters["messages_stale"] == 1
    manager.tick(2.0)  # round 2 deadline: backoff doubles to 2 s
    manager.tick(3.9)
    assert manager.take_outbox() == []
    manager.tick(4.0)
    assert len(manager.take_outbox()) == 1
    manager.tick(5.0)
    assert manager.take_events() == [NoBids("t1", 1, 3)]
    assert manager.phase("t1") is None


def test_busy_refusals_queue_the_task_instead_of_using_up_rounds() -> None:
    manager = started((A, B), no_bid_rounds_max=1, bid_window_s=1.0, busy_backoff_s=0.5,
                      busy_backoff_max_s=1.0, busy_wait_max_s=10.0)
    manager.take_outbox()
    busy_round = 1

    def refuse_round(now: float) -> None:
        manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1, round=busy_round,
                                                reason="busy", busy=True)))
        manager.step(Incoming(B, REFUSE, Refuse(task_id="t1", epoch=1, round=busy_round,
                                                reason="no capability summarize")))
        assert manager.phase("t1") is AuctionPhase.BACKOFF, now

    refuse_round(0.0)
    manager.tick(0.49)
    assert manager.take_outbox() == []
    manager.tick(0.5)  # first busy wait: busy_backoff_s
    assert len(manager.take_outbox()) == 2
    busy_round = 2
    refuse_round(0.5)
    manager.tick(1.5)  # doubled, and capped at busy_backoff_max_s
    assert len(manager.take_outbox()) == 2
    busy_round = 3
    refuse_round(1.5)
    assert manager.take_events() == []  # three rounds with no bid, rounds_max 1: still queued
    manager.tick(2.5)
    manager.take_outbox()
    manager.step(Incoming(A, PROPOSE, propose(round=4)))  # a slot came free
    manager.step(Incoming(B, REFUSE, Refuse(task_id="t1", epoch=1, round=4)))
    [decision] = manager.take_events()
    assert isinstance(decision, AwardDecision) and decision.winner.node_id == A
    assert manager.counters["rounds_busy"] == 3
    assert manager.counters["auctions_given_up"] == 0


def test_a_task_busy_for_longer_than_busy_wait_max_gives_up() -> None:
    manager = started((A,), bid_window_s=1.0, busy_backoff_s=1.0, busy_backoff_max_s=1.0,
                      busy_wait_max_s=3.0)
    now = 0.0
    events: list[object] = []
    for busy_round in range(1, 10):
        manager.take_outbox()
        manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1, round=busy_round,
                                                reason="busy", busy=True)))
        events = manager.take_events()
        if events:
            break
        now += 1.0
        manager.tick(now)
    assert events == [NoBids("t1", 1, 3, busy=True)]
    assert manager.phase("t1") is None


def test_a_round_without_busy_refusals_counts_as_empty_again() -> None:
    manager = started((A,), no_bid_rounds_max=2, bid_window_s=1.0, no_bid_backoff_s=1.0,
                      busy_backoff_s=0.5)
    manager.take_outbox()
    manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1, reason="busy", busy=True)))
    manager.tick(0.5)
    manager.take_outbox()
    manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1, round=2)))  # declined
    manager.tick(1.5)
    manager.take_outbox()
    manager.step(Incoming(A, REFUSE, Refuse(task_id="t1", epoch=1, round=3)))
    assert manager.take_events() == [NoBids("t1", 1, 2)]


def test_no_candidates_is_an_empty_round() -> None:
    manager = started((), no_bid_rounds_max=1)
    assert manager.take_events() == [NoBids("t1", 1, 1)]


def test_start_refusals_are_counted() -> None:
    manager = started(auctions_max=1)
    assert not manager.start_auction(record(), [A], 0.0)  # same epoch
    assert not manager.start_auction(record("t2"), [A], 0.0)  # full
    done = TaskRecord("t3", "c", b"", TaskState.CANCELLED)
    assert not manager.start_auction(done, [A], 0.0)
    assert (manager.counters["starts_refused"], manager.counters["starts_over_limit"]) == (2, 1)
    fresh = Manager(node_id=M)
    assert not fresh.start_auction(record(), [A], 0.0, input_summary="x" * 5000)
    assert fresh.counters["starts_invalid"] == 1 and len(fresh) == 0


def test_a_newer_epoch_replaces_the_auction() -> None:
    manager = started((A, B))
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.take_outbox()
    assert manager.start_auction(record(epoch=2), [B], 1.0, input_summary="")
    assert kinds_to(manager.take_outbox()) == [(REJECT, A), (CFP, B)]
    assert manager.epoch("t1") == 2
    manager.step(Incoming(B, PROPOSE, propose()))  # epoch 1: stale
    assert manager.counters["messages_stale"] == 1


def test_uninvited_duplicate_and_odd_messages_are_counted() -> None:
    manager = started((A, B), bids_per_auction_max=2)
    manager.start_auction(record("t2"), [A, B, C], 0.0)
    manager.take_outbox()
    manager.step(Incoming(C, PROPOSE, propose("t2")))
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.step(Incoming(A, PROPOSE, propose()))
    manager.step(
        Incoming(A, CFP, CallForProposals(task_id="t", epoch=1, capability="c", bid_window_ms=1))
    )
    manager.step(Incoming(A, INFORM, InformResult(task_id="t1", epoch=1, result=b"")))
    counters = manager.counters
    assert counters["candidates_dropped"] == 1
    assert counters["messages_uninvited"] == 1
    assert counters["messages_duplicate"] == 1
    assert counters["messages_unexpected"] == 2
    assert not manager.cancel("t9") and manager.cancel("t1")
    assert kinds_to(manager.take_outbox())[-1] == (REJECT, A)


def test_bids_per_auction_are_bounded() -> None:
    manager = started([bytes([i]) for i in range(100)], bids_per_auction_max=8)
    assert len(manager.take_outbox()) == 8


# --------------------------------------------------------------- contractor


def contractor(**overrides: object) -> Contractor:
    settings = ContractorSettings(**overrides)  # type: ignore[arg-type]
    return Contractor(
        node_id=A,
        capabilities={"summarize"},
        settings=settings,
        estimator=fixed_estimator(Estimate(cost=2.0, duration_s=3.0, confidence=0.9)),
    )


def cfp(task_id: str = "t1", epoch: int = 1, capability: str = "summarize") -> CallForProposals:
    return CallForProposals(
        task_id=task_id,
        epoch=epoch,
        capability=capability,
        input_summary="in",
        constraints={"gpu": False},
        bid_window_ms=1000,
    )


def test_the_room_check_sees_held_tasks_per_capability_and_refuses_busy() -> None:
    seen: list[dict[str, int]] = []

    def room(held: Mapping[str, int], capability: str) -> bool:
        seen.append(dict(held))
        return held.get(capability, 0) < 1  # one slot per capability

    worker = Contractor(node_id=A, capabilities={"summarize", "translate"}, room=room,
                        settings=ContractorSettings(tasks_running_max=8))
    worker.step(Incoming(M, CFP, cfp("t1")))
    worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t1", epoch=1)))
    worker.step(Incoming(M, CFP, cfp("t2")))  # summarize's slot runs t1
    worker.step(Incoming(M, CFP, cfp("t3", capability="translate")))
    worker.step(Incoming(M, CFP, cfp("t4", capability="translate")))  # t3's bid holds it
    kinds = [(out.kind, out.payloads[0].task_id) for out in worker.take_outbox()]
    assert kinds == [(PROPOSE, "t1"), (REFUSE, "t2"), (PROPOSE, "t3"), (REFUSE, "t4")]
    assert seen[-1] == {"summarize": 1, "translate": 1}
    worker.step(Incoming(M, REJECT, RejectProposal(task_id="t3", epoch=1)))
    worker.step(Incoming(M, CFP, cfp("t4", capability="translate")))
    [bid] = worker.take_outbox()
    assert bid.kind == PROPOSE
    assert worker.counters["refused_busy"] == 2


def test_contractor_bids_with_its_estimate_and_load() -> None:
    worker = contractor(tasks_running_max=2)
    worker.step(Incoming(M, CFP, cfp("t1")))
    worker.step(Incoming(M, CFP, cfp("t2")))
    first, second = (message.payloads[0] for message in worker.take_outbox())
    assert isinstance(first, Propose) and isinstance(second, Propose)
    assert (first.cost, first.duration_s, first.confidence, first.load) == (2.0, 3.0, 0.9, 0.0)
    assert second.load == 0.5
    worker.step(Incoming(M, CFP, cfp("t3")))  # both slots spoken for
    [busy] = worker.take_outbox()
    assert busy.kind == REFUSE
    assert busy.payloads[0] == Refuse(task_id="t3", epoch=1, reason="busy", busy=True)


def test_contractor_refuses_without_the_capability_or_when_declining() -> None:
    worker = contractor()
    worker.step(Incoming(M, CFP, cfp(capability="translate")))
    declining = Contractor(node_id=A, capabilities={"summarize"}, estimator=lambda c: None)
    declining.step(Incoming(M, CFP, cfp()))
    silly = Contractor(
        node_id=A,
        capabilities={"summarize"},
        estimator=fixed_estimator(Estimate(cost=-1.0, duration_s=1.0)),
    )
    silly.step(Incoming(M, CFP, cfp()))
    reasons = [core.take_outbox()[0].payloads[0] for core in (worker, declining, silly)]
    assert [r.reason for r in reasons if isinstance(r, Refuse)] == [
        "no capability translate",
        "declined",
        "bad estimate",
    ]


def test_accept_starts_the_task_and_result_goes_to_the_manager() -> None:
    worker = contractor()
    worker.step(Incoming(M, CFP, cfp()))
    worker.take_outbox()
    worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t1", epoch=1, lease_id=5)))
    [start] = worker.take_events()
    assert isinstance(start, StartTask)
    assert (start.task_id, start.epoch, start.manager, start.lease_id, start.input_summary) == (
        "t1",
        1,
        M,
        5,
        "in",
    )
    assert dict(start.constraints) == {"gpu": False}
    assert worker.running == [("t1", 1)] and worker.offers == 0
    worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t1", epoch=1)))  # duplicate
    assert worker.counters["accepts_duplicate"] == 1
    assert not worker.task_finished("t1", 1, result=b"x" * (1024 * 1024 + 1))
    assert worker.running == [("t1", 1)]
    assert worker.task_finished("t1", 1, digest=b"d" * 32, location="kv:r/t1")
    [inform] = worker.take_outbox()
    assert (inform.kind, inform.to_node) == (INFORM, M)
    assert not worker.task_finished("t1", 1, result=b"again")
    assert worker.counters["finishes_unknown"] == 1


def test_task_failed_sends_failure() -> None:
    worker = contractor()
    worker.step(Incoming(M, CFP, cfp()))
    worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t1", epoch=1)))
    worker.take_outbox()
    assert worker.task_failed("t1", 1, "model unavailable")
    assert worker.take_outbox()[0].payloads[0] == Failure(
        task_id="t1", epoch=1, reason="model unavailable"
    )
    assert not worker.task_failed("t1", 1, "again")


def test_reject_and_expiry_free_the_slot() -> None:
    worker = contractor(tasks_running_max=1, award_grace_s=1.0)
    worker.step(Incoming(M, CFP, cfp("t1")))
    worker.step(Incoming(B, REJECT, RejectProposal(task_id="t1", epoch=1)))  # not its manager
    worker.step(Incoming(M, REJECT, RejectProposal(task_id="t1", epoch=1)))
    assert worker.offers == 0
    worker.step(Incoming(M, CFP, cfp("t2")))
    worker.tick(1.9)
    assert worker.offers == 1
    worker.tick(2.0)  # window 1 s + grace 1 s
    assert worker.offers == 0
    worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t2", epoch=1)))  # too late
    out = worker.take_outbox()
    assert out[-1].kind == FAILURE
    counters = worker.counters
    assert (
        counters["rejects_unknown"],
        counters["offers_expired"],
        counters["accepts_unknown"],
    ) == (1, 1, 1)


def test_a_new_round_replaces_the_bid_and_running_tasks_are_refused() -> None:
    worker = contractor(tasks_running_max=1)
    worker.step(Incoming(M, CFP, cfp()))
    worker.step(Incoming(M, CFP, cfp().model_copy(update={"round": 2})))
    bids = [message.payloads[0] for message in worker.take_outbox()]
    assert [type(bid) for bid in bids] == [Propose, Propose] and worker.offers == 1
    worker.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t1", epoch=1)))
    worker.step(Incoming(M, CFP, cfp()))
    assert worker.take_outbox()[0].payloads[0] == Refuse(
        task_id="t1", epoch=1, reason="already running"
    )
    worker.step(Incoming(M, PROPOSE, propose()))
    assert worker.counters["messages_unexpected"] == 1


def test_one_auction_end_to_end() -> None:
    manager = Manager(node_id=M)
    workers = {
        A: Contractor(
            node_id=A,
            capabilities={"summarize"},
            estimator=fixed_estimator(Estimate(cost=5.0, duration_s=1.0)),
        ),
        B: Contractor(
            node_id=B,
            capabilities={"summarize"},
            estimator=fixed_estimator(Estimate(cost=1.0, duration_s=1.0)),
        ),
        C: Contractor(node_id=C, capabilities={"translate"}),
    }
    cores: dict[bytes, Manager | Contractor] = {M: manager, **workers}
    kv, current, version = created()
    assert manager.start_auction(current, list(workers), 0.0)
    deliver(manager.take_outbox(), M, cores)
    for node, worker in workers.items():
        deliver(worker.take_outbox(), node, cores)
    [decision] = manager.take_events()
    assert isinstance(decision, AwardDecision) and decision.winner.node_id == B
    ok = kv.apply(must(ledger.award(current, version, epoch=1, contractor=B, lease_id=3))).ok
    manager.award_committed("t1", 1, ok, lease_id=3)
    deliver(manager.take_outbox(), M, cores)
    assert workers[A].offers == 0
    [start] = workers[B].take_events()
    assert isinstance(start, StartTask)
    workers[B].task_finished("t1", 1, result=b"summary")
    deliver(workers[B].take_outbox(), B, cores)
    [reported] = manager.take_events()
    assert isinstance(reported, ResultReported)
    current, version = kv.read("t1")
    assert kv.apply(
        must(
            ledger.complete(
                current,
                version,
                epoch=reported.epoch,
                contractor=reported.contractor,
                result=reported.result,
            )
        )
    ).ok
    assert kv.read("t1")[0].state is TaskState.DONE


# --------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    managers=st.integers(min_value=2, max_value=5),
    order=st.data(),
)
def test_property_exactly_one_award_per_epoch(managers: int, order: st.DataObject) -> None:
    """Managers read the ledger, award to their own favourite, and retry after a lost
    CAS by rereading; under any interleaving one award per epoch commits."""
    kv, _, _ = created(max_attempts=5)
    winners: dict[int, list[bytes]] = {}
    reads: dict[int, tuple[TaskRecord, int] | None] = dict.fromkeys(range(managers))
    for _ in range(managers * 6):
        who = order.draw(st.integers(min_value=0, max_value=managers - 1))
        action = order.draw(st.sampled_from(["read", "award", "fail"]))
        if action == "read" or reads[who] is None:
            reads[who] = kv.read("t1")
            continue
        current, version = reads[who]  # type: ignore[misc]
        if action == "award":
            step = ledger.award(
                current, version, epoch=current.epoch, contractor=bytes([who]), lease_id=1 + who
            )
        else:
            step = ledger.fail_attempt(current, version, epoch=current.epoch, reason="x")
        if isinstance(step, Transition):
            response = kv.apply(step)
            if response.ok and action == "award":
                winners.setdefault(current.epoch, []).append(bytes([who]))
        reads[who] = None  # reread before the next write
    assert all(len(nodes) == 1 for nodes in winners.values()), winners
    final, _ = kv.read("t1")
    if final.state is TaskState.AWARDED:
        assert winners[final.epoch] == [final.contractor]


@settings(max_examples=200, deadline=None)
@given(
    reopens=st.integers(min_value=1, max_value=4),
    late_epoch=st.integers(min_value=1, max_value=4),
    contractor_byte=st.integers(min_value=0, max_value=3),
)
def test_property_older_epoch_results_are_refused(
    reopens: int, late_epoch: int, contractor_byte: int
) -> None:
    kv, _, _ = created(max_attempts=10)
    for epoch in range(1, reopens + 1):
        current, version = awarded(kv, to=bytes([epoch % 4]))
        assert kv.apply(must(ledger.reopen(current, version, epoch=epoch))).ok
    current, version = awarded(kv, to=b"now")
    stale = min(late_epoch, current.epoch - 1)
    answer = ledger.complete(
        current, version, epoch=stale, contractor=bytes([contractor_byte]), result=b"late"
    )
    assert refused(answer) is RefusalReason.STALE_EPOCH


@settings(max_examples=200, deadline=None)
@given(
    max_attempts=st.integers(min_value=1, max_value=6),
    outcomes=st.lists(st.sampled_from(["fail", "lost", "no_bids", "done"]), max_size=12),
)
def test_property_failures_end_in_done_or_failed(max_attempts: int, outcomes: list[str]) -> None:
    kv, _, _ = created(max_attempts=max_attempts)
    steps = 0
    for outcome in itertools.chain(outcomes, itertools.repeat("fail")):
        current, version = kv.read("t1")
        if current.final:
            break
        steps += 1
        if outcome == "no_bids":
            step = ledger.fail_attempt(current, version, epoch=current.epoch, reason="no bids")
        else:
            current, version = awarded(kv, to=A)
            if outcome == "done":
                step = ledger.complete(
                    current, version, epoch=current.epoch, contractor=A, result=b"r"
                )
            elif outcome == "lost":
                step = ledger.reopen(current, version, epoch=current.epoch)
            else:
                step = ledger.fail_attempt(current, version, epoch=current.epoch, reason="oom")
        assert kv.apply(must(step)).ok
    final, _ = kv.read("t1")
    assert final.state in (TaskState.DONE, TaskState.FAILED)
    assert steps <= max_attempts
    assert final.attempts <= max_attempts
    if final.state is TaskState.FAILED:
        assert final.attempts == max_attempts == len(final.failure_reasons)


@settings(max_examples=300, deadline=None)
@given(
    candidates=st.integers(min_value=0, max_value=6),
    window=st.floats(min_value=0.1, max_value=5.0),
    rounds_max=st.integers(min_value=1, max_value=4),
    data=st.data(),
)
def test_property_every_auction_ends_by_its_deadline(
    candidates: int, window: float, rounds_max: int, data: st.DataObject
) -> None:
    """Invitees bid, refuse or stay silent; ticks come at arbitrary times at most a
    window apart. No round is still collecting after a tick at or past its deadline,
    and the auction ends with an award decision or NoBids within its rounds."""
    backoff = 0.5
    manager = Manager(
        node_id=M,
        settings=ManagerSettings(
            bid_window_s=window, no_bid_rounds_max=rounds_max, no_bid_backoff_s=backoff
        ),
    )
    nodes = [bytes([i]) for i in range(candidates)]
    assert manager.start_auction(record(), nodes, 0.0)
    now, round_, deadline = 0.0, 1, window
    outcome: list[ManagerEvent] = manager.take_events()
    while not outcome:
        for message in manager.take_outbox():
            cfp = message.payloads[0]
            if isinstance(cfp, CallForProposals) and cfp.round != round_:
                round_, deadline = cfp.round, now + window
        for node in nodes:
            answer = data.draw(st.sampled_from(["bid", "refuse", "silent"]), label="answer")
            if answer == "silent" or manager.phase("t1") is not AuctionPhase.COLLECTING:
                continue
            if answer == "bid":
                manager.step(Incoming(node, PROPOSE, propose(round=round_)))
            else:
                manager.step(Incoming(node, REFUSE, Refuse(task_id="t1", epoch=1, round=round_)))
        outcome = manager.take_events()
        if outcome:
            break
        now += data.draw(st.floats(min_value=0.0, max_value=window), label="gap")
        manager.tick(now)
        outcome = manager.take_events()
        if now >= deadline and manager.phase("t1") is AuctionPhase.COLLECTING:
            assert manager.take_outbox(), "a round outlived its deadline"  # a new round began
            round_, deadline = round_ + 1, now + window
        # Each round and each backoff end at most one tick gap late.
        latest = rounds_max * window + sum(backoff * 2**k for k in range(rounds_max - 1))
        assert now <= latest + 2 * rounds_max * window + 1e-6, "auction never ended"
    [event] = outcome
    assert isinstance(event, AwardDecision | NoBids)
    if isinstance(event, NoBids):
        assert event.rounds == rounds_max and manager.phase("t1") is None
    else:
        assert manager.phase("t1") is AuctionPhase.DECIDING
