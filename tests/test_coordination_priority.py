"""Priority-based resolution: rank, confidence and freshness, ties, missing fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.coordination.priority import Claim, ResolutionError, resolve
from mesh.errors import MeshError

pytestmark = pytest.mark.timeout(30)


def sources(claims: list[Claim]) -> list[str]:
    return [c.source for c in claims]


# ------------------------------------------------------------------ rank


def test_the_lowest_rank_wins() -> None:
    resolution = resolve([Claim("agent-a", "x", rank=2), Claim("agent-b", "y", rank=1),
                          Claim("agent-c", "z", rank=3)], "rank")
    assert resolution.winner.value == "y" and resolution.strategy == "rank"
    assert sources(resolution.ranking) == ["agent-b", "agent-a", "agent-c"]
    assert sources(resolution.losers) == ["agent-a", "agent-c"]
    assert resolution.reason == ("agent-b's value has the best rank (1, against agent-a's 2; "
                                 "lower wins)")


def test_the_ranks_table_stands_over_a_claimed_rank() -> None:
    resolution = resolve([Claim("agent-a", "x", rank=0), Claim("agent-b", "y")], "rank",
                         ranks={"agent-a": 5, "agent-b": 1})
    assert resolution.winner.source == "agent-b"
    assert resolution.notes == ["agent-a claims rank 0 but the ranks table gives 5: "
                                "the table stands"]


def test_equal_ranks_are_broken_by_source_name() -> None:
    resolution = resolve([Claim("b", 1, rank=1), Claim("a", 2, rank=1)], "rank")
    assert resolution.winner.source == "a"
    assert resolution.reason == "a and b tie at rank 1; a's value wins on source name " \
                                "(the tie-break)"


def test_claims_without_a_rank_come_last_and_are_noted() -> None:
    resolution = resolve([Claim("a", 1), Claim("c", 3, rank=9), Claim("b", 2)], "rank")
    assert sources(resolution.ranking) == ["c", "a", "b"]
    assert resolution.notes == ["a has no rank: ranked last", "b has no rank: ranked last"]
    assert resolution.reason == "c's value has a rank (9) and a's has none"
    nobody = resolve([Claim("b", 1), Claim("a", 2)], "rank")
    assert nobody.winner.source == "a" and nobody.notes == ["no claim has a rank"]
    assert nobody.reason.startswith("no claim has a rank; a's value wins on source name")


# ------------------------------------------------------------------ confidence


def test_the_highest_confidence_wins() -> None:
    resolution = resolve([Claim("agent-a", 1, confidence=0.7),
                          Claim("agent-b", 2, confidence=0.9),
                          Claim("agent-c", 3)], "confidence")
    assert sources(resolution.ranking) == ["agent-b", "agent-a", "agent-c"]
    assert resolution.reason == ("agent-b's value has the highest confidence (0.9, against "
                                 "agent-a's 0.7)")
    assert resolution.notes == ["agent-c has no confidence: ranked last"]


def test_equal_confidence_is_broken_by_source_name() -> None:
    resolution = resolve([Claim("z", 1, confidence=0.5), Claim("y", 2, confidence=0.5)],
                         "confidence")
    assert resolution.winner.source == "y" and "tie at confidence 0.5" in resolution.reason


# ------------------------------------------------------------------ freshness


def test_the_newest_value_wins() -> None:
    resolution = resolve([Claim("agent-a", 1, updated_at=100.0),
                          Claim("agent-b", 2, updated_at=102.5)], "freshness")
    assert resolution.winner.source == "agent-b"
    assert resolution.reason == "agent-b's value is the newest (updated 2.5 s after agent-a's)"


def test_equal_times_are_told_apart_by_version() -> None:
    resolution = resolve([Claim("agent-a", 1, updated_at=7.0, version=5),
                          Claim("agent-b", 2, updated_at=7.0, version=3)], "freshness")
    assert resolution.winner.source == "agent-a"
    assert "higher version (5, against agent-b's 3)" in resolution.reason


def test_a_full_freshness_tie_falls_to_the_source_name() -> None:
    resolution = resolve([Claim("b", 1, updated_at=7.0, version=3),
                          Claim("a", 2, updated_at=7.0, version=3)], "freshness")
    assert resolution.winner.source == "a" and "the tie-break" in resolution.reason


def test_claims_without_an_update_time_come_last_then_by_version() -> None:
    resolution = resolve([Claim("a", 1, version=9), Claim("b", 2, updated_at=1.0),
                          Claim("c", 3, version=2), Claim("d", 4)], "freshness")
    assert sources(resolution.ranking) == ["b", "a", "c", "d"]
    assert resolution.notes == [f"{s} has no update time: ranked last" for s in "acd"]
    assert resolution.reason == "b's value has an update time and a's has none"
    by_version = resolve([Claim("a", 1), Claim("b", 2, version=1)], "freshness")
    assert by_version.winner.source == "b" and by_version.notes == ["no claim has an update time"]


def test_a_single_claim_wins_alone() -> None:
    resolution = resolve([Claim("only", {"k": 1})], "confidence")
    assert resolution.winner.source == "only" and resolution.losers == []
    assert resolution.reason == "only's is the only claim"


# ------------------------------------------------------------------ errors and JSON


@pytest.mark.parametrize(("fields", "message"), [
    ({"source": ""}, "source"),
    ({"rank": 1.5}, r"rank \(1.5\)"),
    ({"rank": True}, "rank"),
    ({"confidence": 1.2}, r"confidence \(1.2\)"),
    ({"confidence": float("nan")}, "confidence"),
    ({"updated_at": float("inf")}, "updated_at"),
    ({"version": -1}, r"version \(-1\)"),
])
def test_malformed_claims_are_refused_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ResolutionError, match=message):
        Claim(**({"source": "a", "value": 1} | fields))  # type: ignore[arg-type]


def test_malformed_resolutions_are_refused() -> None:
    with pytest.raises(ResolutionError, match="no claim"):
        resolve([], "rank")
    with pytest.raises(ResolutionError, match="a makes more than one claim"):
        resolve([Claim("a", 1), Claim("a", 2)], "rank")
    with pytest.raises(ResolutionError, match="strategy 'age'"):
        resolve([Claim("a", 1)], "age")  # type: ignore[arg-type]
    with pytest.raises(ResolutionError, match="ranks entry 'a'"):
        resolve([Claim("a", 1)], "rank", ranks={"a": "high"})  # type: ignore[dict-item]
    assert issubclass(ResolutionError, MeshError)


def test_a_resolution_is_json() -> None:
    resolution = resolve([Claim("a", {"n": 1}, rank=1), Claim("b", [2], rank=2)], "rank")
    data = json.loads(json.dumps(resolution.to_json()))
    assert data["winner"]["value"] == {"n": 1} and data["losers"][0]["source"] == "b"


claim_st = st.builds(Claim, source=st.sampled_from(list("abcdef")), value=st.integers(),
                     rank=st.none() | st.integers(0, 3),
                     confidence=st.none() | st.sampled_from([0.1, 0.5, 0.9]),
                     updated_at=st.none() | st.sampled_from([1.0, 2.0]),
                     version=st.none() | st.integers(0, 2))


@settings(max_examples=200, deadline=None)
@given(claims=st.lists(claim_st, min_size=1, max_size=6, unique_by=lambda c: c.source),
       strategy=st.sampled_from(["rank", "confidence", "freshness"]), data=st.data())
def test_the_winner_does_not_depend_on_the_order_given(claims: list[Claim], strategy: Any,
                                                       data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(claims))
    ranks = {"a": 2, "c": 0}
    first = resolve(claims, strategy, ranks=ranks)
    second = resolve(shuffled, strategy, ranks=ranks)
    assert first.ranking == second.ranking and first.reason == second.reason
    assert first.notes == second.notes
    assert first.winner == first.ranking[0] and first.losers == first.ranking[1:]
