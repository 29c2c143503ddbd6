"""Joint awards of batched calls for proposals: the solver, the contractor's places
held per batch, the manager's batch decision, and the two cores together.

The solver is checked against brute force and against SciPy's
``linear_sum_assignment`` (the reference the allocation-quality target names).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.contract_net.assignment import assign_places, solve
from agents.contract_net.contractor import Contractor, Estimate
from agents.contract_net.events import AwardDecision
from agents.contract_net.ledger import TaskRecord
from agents.contract_net.manager import AuctionPhase, Manager
from agents.contract_net.messages import (
    ACCEPT,
    CFP,
    PROPOSE,
    REJECT,
    AcceptProposal,
    CallForProposals,
    Propose,
    RejectProposal,
)
from agents.contract_net.scoring import ScoringWeights
from agents.contract_net.settings import ContractorSettings, ManagerSettings
from consensus.core import Incoming, Outgoing

A, B, C, M = b"node-a", b"node-b", b"node-c", b"manager"
COST_ONLY = ScoringWeights(finish_time=0.0, load=0.0)


# ------------------------------------------------------------------ solver


def brute_force(costs: Sequence[Sequence[float | None]]) -> tuple[int, float]:
    """(most rows placed, least cost among placements of that many rows)."""
    rows = len(costs)
    columns = len(costs[0]) if costs else 0
    best = (0, 0.0)
    for placed in range(min(rows, columns), 0, -1):
        found = math.inf
        for chosen_rows in itertools.combinations(range(rows), placed):
            for chosen_columns in itertools.permutations(range(columns), placed):
                values = [costs[r][c] for r, c in zip(chosen_rows, chosen_columns, strict=True)]
                if all(value is not None for value in values):
                    found = min(found, sum(values))  # type: ignore[arg-type]
        if found < math.inf:
            return placed, found
    return best


def placement_value(costs: Sequence[Sequence[float | None]],
                    placed: Sequence[int | None]) -> tuple[int, float]:
    columns = [column for column in placed if column is not None]
    assert len(columns) == len(set(columns)), "a column was given twice"
    total = 0.0
    for row, column in enumerate(placed):
        if column is not None:
            value = costs[row][column]
            assert value is not None, "a forbidden pairing was chosen"
            total += value
    return len(columns), total


@pytest.mark.parametrize("seed", range(60))
def test_solver_places_the_most_rows_at_the_least_cost(seed: int) -> None:
    rng = Random(seed)
    rows, columns = rng.randint(1, 5), rng.randint(1, 5)
    costs = [[None if rng.random() < 0.3 else round(rng.uniform(-5, 10), 2)
              for _ in range(columns)] for _ in range(rows)]
    count, total = placement_value(costs, solve(costs))
    best_count, best_total = brute_force(costs)
    assert count == best_count
    assert total == pytest.approx(best_total)


@pytest.mark.parametrize("seed", range(30))
def test_solver_matches_scipy_linear_sum_assignment(seed: int) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    rng = Random(seed)
    rows = rng.randint(1, 12)
    columns = rng.randint(rows, 20)
    costs = [[rng.uniform(0, 100) for _ in range(columns)] for _ in range(rows)]
    row_index, column_index = optimize.linear_sum_assignment(costs)
    reference = sum(costs[r][c] for r, c in zip(row_index, column_index, strict=True))
    count, total = placement_value(costs, solve(costs))
    assert count == rows
    assert total == pytest.approx(reference)


def test_solver_refuses_numbers_that_are_not_finite_and_ragged_rows() -> None:
    with pytest.raises(ValueError, match="finite"):
        solve([[1.0, math.nan]])
    with pytest.raises(ValueError, match="same length"):
        solve([[1.0, 2.0], [1.0]])
    assert solve([]) == []
    assert solve([[None, None]]) == [None]


def test_assign_places_respects_capacities_and_prefers_placing_more() -> None:
    # A is cheapest for both but has one place: it goes where it saves the most.
    rows = [{A: 1.0, B: 2.0}, {A: 1.0, B: 10.0}]
    assert assign_places(rows, {A: 1, B: 2}) == [B, A]
    # Without capacities each row takes its favourite (ties: the lower node id).
    assert assign_places(rows, {}) == [A, A]
    assert assign_places([{A: 1.0, B: 1.0}], {}) == [A]
    # Three rows, two places in all: two are placed, the dearest row waits.
    rows3 = [{A: 1.0}, {A: 5.0, B: 6.0}, {B: 1.0}]
    assert assign_places(rows3, {A: 1, B: 1}) == [A, None, B]
    assert assign_places([{}], {}) == [None]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from([A, B, C]), st.integers(0, 9), max_size=3),
             min_size=1, max_size=5),
    st.fixed_dictionaries({A: st.integers(1, 3), B: st.integers(1, 3), C: st.integers(1, 3)}),
)
def test_assign_places_is_optimal(rows: list[dict[bytes, int]],
                                  capacities: dict[bytes, int]) -> None:
    scored = [{node: float(score) for node, score in row.items()} for row in rows]
    chosen = assign_places(scored, capacities)
    for node in (A, B, C):
        assert chosen.count(node) <= capacities[node]
    columns = [node for node in (A, B, C) for _ in range(capacities[node])]
    costs = [[row.get(node) for node in columns] for row in scored]
    placed = sum(node is not None for node in chosen)
    total = sum(row[node] for row, node in zip(scored, chosen, strict=True) if node is not None)
    assert (placed, total) == pytest.approx(brute_force(costs))


# ------------------------------------------------------------------ contractor


def batch_cfp(task_id: str, *, batch_id: int = 7, size: int = 4, capability: str = "x",
              epoch: int = 1) -> CallForProposals:
    return CallForProposals(task_id=task_id, epoch=epoch, capability=capability,
                            bid_window_ms=500, batch_id=batch_id, batch_size=size)


def calls_in(outbox: Sequence[Outgoing]) -> list[CallForProposals]:
    return [payload for message in outbox for payload in message.payloads
            if isinstance(payload, CallForProposals)]


def rejects_in(outbox: Sequence[Outgoing]) -> list[tuple[bytes | None, str]]:
    return [(message.to_node, payload.task_id) for message in outbox
            for payload in message.payloads if isinstance(payload, RejectProposal)]


def bids_of(outbox: Sequence[Outgoing]) -> list[Propose]:
    return [payload for message in outbox if message.kind == PROPOSE
            for payload in message.payloads if isinstance(payload, Propose)]


def test_contractor_bids_on_a_whole_batch_holding_only_its_places() -> None:
    contractor = Contractor(node_id=A, capabilities=["x"],
                            settings=ContractorSettings(tasks_running_max=2))
    for number in range(4):
        contractor.step(Incoming(M, CFP, batch_cfp(f"t{number}")))
    bids = bids_of(contractor.take_outbox())
    assert [bid.capacity for bid in bids] == [1, 2, 2, 2]
    assert {bid.load for bid in bids} == {0.0}, "one batch, one load"
    assert contractor.places_held == 2 and contractor.offers == 4
    assert contractor.counters["proposals_overbooked"] == 2
    # Another manager's plain call finds no room.
    contractor.step(Incoming(B, CFP, CallForProposals(task_id="u", epoch=1, capability="x",
                                                      bid_window_ms=500)))
    assert contractor.counters["refused_busy"] == 3
    # Places shrink to the bids still open, and an accept takes one with it.
    for number in (0, 1):
        contractor.step(Incoming(M, REJECT, RejectProposal(task_id=f"t{number}", epoch=1)))
    assert contractor.places_held == 2
    contractor.step(Incoming(M, REJECT, RejectProposal(task_id="t2", epoch=1)))
    assert contractor.places_held == 1
    contractor.step(Incoming(M, ACCEPT, AcceptProposal(task_id="t3", epoch=1)))
    assert contractor.running == [("t3", 1)] and contractor.places_held == 1
    assert contractor.offers == 0 and contractor.counters["accepts_overbooked"] == 0


def test_an_award_beyond_the_batch_places_runs_and_is_counted() -> None:
    contractor = Contractor(node_id=A, capabilities=["x"],
                            settings=ContractorSettings(tasks_running_max=1))
    for number in range(3):
        contractor.step(Incoming(M, CFP, batch_cfp(f"t{number}", size=3)))
    for number in range(3):
        contractor.step(Incoming(M, ACCEPT, AcceptProposal(task_id=f"t{number}", epoch=1)))
    assert len(contractor.running) == 3
    assert contractor.counters["accepts_overbooked"] == 2
    assert contractor.places_held == 3


def test_a_busy_node_holds_nothing_for_a_batch_it_has_no_place_for() -> None:
    contractor = Contractor(node_id=A, capabilities=["x"],
                            settings=ContractorSettings(tasks_running_max=1))
    contractor.step(Incoming(B, CFP, CallForProposals(task_id="u", epoch=1, capability="x",
                                                      bid_window_ms=500)))
    for number in range(2):
        contractor.step(Incoming(M, CFP, batch_cfp(f"t{number}", size=2)))
    assert len(bids_of(contractor.take_outbox())) == 1
    assert contractor.counters["refused_busy"] == 2


def test_expired_batch_bids_give_their_places_back() -> None:
    contractor = Contractor(node_id=A, capabilities=["x"],
                            settings=ContractorSettings(tasks_running_max=2, award_grace_s=1.0))
    for number in range(3):
        contractor.step(Incoming(M, CFP, batch_cfp(f"t{number}", size=3)))
    contractor.tick(10.0)
    assert contractor.places_held == 0 and contractor.offers == 0


# ------------------------------------------------------------------ manager


def task(task_id: str) -> TaskRecord:
    return TaskRecord(task_id, "x", b"in", epoch=1)


def bid(task_id: str, cost: float, capacity: int | None) -> Propose:
    return Propose(task_id=task_id, epoch=1, cost=cost, duration_s=1.0, load=0.0,
                   confidence=1.0, capacity=capacity)


def batch_manager(tasks: Sequence[str], **overrides: object) -> tuple[Manager, list[Outgoing]]:
    settings = ManagerSettings(weights=COST_ONLY, **overrides)  # type: ignore[arg-type]
    manager = Manager(node_id=M, settings=settings, first_batch_id=41)
    for task_id in tasks:
        assert manager.start_auction(task(task_id), [A, B], 0.0)
    return manager, manager.take_outbox()


def awards(manager: Manager) -> dict[str, bytes]:
    return {event.task_id: event.winner.node_id for event in manager.take_events()
            if isinstance(event, AwardDecision)}


def test_calls_started_together_go_out_as_one_batch() -> None:
    manager, outbox = batch_manager(["t1", "t2"])
    assert {(call.batch_id, call.batch_size) for call in calls_in(outbox)} == {(41, 2)}
    assert manager.counters["batches_sent"] == 1
    # One started alone is a plain call.
    manager.start_auction(task("t3"), [A], 0.0)
    (alone,) = calls_in(manager.take_outbox())
    assert alone.batch_id is None


def test_batch_is_awarded_jointly_within_capacities() -> None:
    manager, _ = batch_manager(["t1", "t2"])
    # A is cheaper for both but holds one place: it must go to t2, where it saves most.
    manager.step(Incoming(A, PROPOSE, bid("t1", 1.0, 1)))
    manager.step(Incoming(B, PROPOSE, bid("t1", 2.0, 2)))
    manager.step(Incoming(A, PROPOSE, bid("t2", 1.0, 1)))
    assert not manager.take_events(), "the batch waits for every answer"
    manager.step(Incoming(B, PROPOSE, bid("t2", 10.0, 2)))
    assert awards(manager) == {"t1": B, "t2": A}
    assert manager.phase("t1") is AuctionPhase.DECIDING
    assert set(rejects_in(manager.take_outbox())) == {(A, "t1"), (B, "t2")}
    assert manager.counters["decisions_early"] == 2


def test_a_task_left_without_a_place_waits_as_after_a_busy_round() -> None:
    manager, _ = batch_manager(["t1", "t2", "t3"], busy_backoff_s=0.1)
    for task_id in ("t1", "t2", "t3"):
        manager.step(Incoming(A, PROPOSE, bid(task_id, 1.0, 1)))
        manager.step(Incoming(B, PROPOSE, bid(task_id, 2.0 if task_id != "t3" else 50.0, 1)))
    assert set(awards(manager).values()) == {A, B}
    assert manager.phase("t3") is AuctionPhase.BACKOFF
    assert manager.counters["rounds_outbid"] == 1
    rejected = [task_id for _, task_id in rejects_in(manager.take_outbox())]
    assert rejected.count("t3") == 2
    manager.tick(0.2)
    calls = calls_in(manager.take_outbox())
    assert [(call.task_id, call.round) for call in calls] == [("t3", 2), ("t3", 2)]


def test_a_batch_is_decided_at_the_deadline_with_the_answers_in() -> None:
    manager, _ = batch_manager(["t1", "t2"], bid_window_s=0.5)
    manager.step(Incoming(A, PROPOSE, bid("t1", 1.0, 2)))
    manager.step(Incoming(A, PROPOSE, bid("t2", 1.0, 2)))
    manager.tick(0.4)
    assert not manager.take_events()
    manager.tick(0.5)
    assert awards(manager) == {"t1": A, "t2": A}
    assert manager.counters["decisions_at_deadline"] == 2


def test_cancelling_a_member_decides_the_rest_when_they_are_answered() -> None:
    manager, _ = batch_manager(["t1", "t2"])
    for node in (A, B):
        manager.step(Incoming(node, PROPOSE, bid("t1", 1.0, 2)))
    assert manager.cancel("t2")
    assert awards(manager) == {"t1": A}


# ------------------------------------------------------------------ together


def run_batch(costs: Mapping[bytes, Mapping[str, float]], slots: Mapping[bytes, int],
              tasks: Sequence[str]) -> dict[str, bytes]:
    """Manager and real contractors exchanging messages until the batch is decided."""
    def estimator(node: bytes) -> Callable[[CallForProposals], Estimate]:
        return lambda cfp: Estimate(cost=costs[node][cfp.task_id], duration_s=1.0)

    cores: dict[bytes, Manager | Contractor] = {
        node: Contractor(node_id=node, capabilities=["x"], estimator=estimator(node),
                         settings=ContractorSettings(tasks_running_max=slots[node]))
        for node in costs}
    manager = Manager(node_id=M, settings=ManagerSettings(weights=COST_ONLY))
    cores[M] = manager
    for task_id in tasks:
        assert manager.start_auction(task(task_id), list(costs), 0.0)
    pending: list[tuple[bytes, Outgoing]] = [(M, out) for out in manager.take_outbox()]
    while pending:
        sender, message = pending.pop(0)
        assert message.to_node is not None
        core = cores[message.to_node]
        for payload in message.payloads:
            core.step(Incoming(sender, message.kind, payload))
        pending.extend((message.to_node, out) for out in core.take_outbox())
    return awards(manager)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cores_together_reach_the_optimum_of_a_batch(data: st.DataObject) -> None:
    nodes = [A, B, C]
    tasks = [f"t{i}" for i in range(data.draw(st.integers(1, 5)))]
    slots = {node: data.draw(st.integers(1, 2)) for node in nodes}
    costs = {node: {t: float(data.draw(st.integers(1, 20))) for t in tasks} for node in nodes}
    chosen = run_batch(costs, slots, tasks)
    columns = [node for node in nodes for _ in range(slots[node])]
    matrix = [[costs[node][t] for node in columns] for t in tasks]
    best_placed, best_total = brute_force(matrix)
    assert len(chosen) == best_placed
    assert sum(costs[node][t] for t, node in chosen.items()) == pytest.approx(best_total)
    for node in nodes:
        assert list(chosen.values()).count(node) <= slots[node]
