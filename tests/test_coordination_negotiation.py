"""Conflict resolution: priority, vote, negotiation rounds, fallbacks, and the record."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import pytest

from agents.coordination.negotiation import (
    Conflict,
    ConflictError,
    Proposal,
    ResolutionRecord,
    ResolverConfig,
    resolve_conflict,
)
from agents.coordination.priority import Claim
from agents.coordination.voting import Ballot, VotingRule
from mesh.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

Voter = Callable[[str, Sequence[str]], Awaitable[Ballot]]


def data_conflict(*values: Any, **fields: Any) -> Conflict:
    """Agents a, b, c... claiming ``values`` for one answer."""
    return Conflict("data", "population of Lyon", [
        Claim(chr(ord("a") + i), value, **fields) for i, value in enumerate(values)])


def resolve(conflict: Conflict, config: ResolverConfig, **parties: Any) -> ResolutionRecord:
    record = anyio.run(lambda: resolve_conflict(conflict, config, **parties))
    # Every record is JSON, whatever happened.
    json.loads(json.dumps(record.to_json()))
    return record


def voting_for(**picks: Any) -> dict[str, Voter]:
    """Voters choosing the option whose JSON is ``json.dumps(value)``."""
    def voter(name: str, value: Any) -> Voter:
        async def vote(question: str, options: Sequence[str]) -> Ballot:
            assert question.startswith("data conflict over 'population of Lyon'")
            return Ballot(name, json.dumps(value, sort_keys=True), reason="my source says so")
        return vote
    return {name: voter(name, value) for name, value in picks.items()}


class Person:
    """A person callback that records what it was asked."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def __call__(self, conflict: Conflict, why: str) -> Any:
        self.asked.append(why)
        return self.answer


class Scripted:
    """A negotiator that plays its proposals round by round (the last one repeats)."""

    def __init__(self, source: str, *moves: tuple[Any, bool, str]) -> None:
        self.source = source
        self.moves = list(moves)
        self.seen: list[dict[str, Any]] = []

    async def counter(self, conflict: Conflict, round: int,
                      proposals: Mapping[str, Proposal]) -> Proposal:
        self.seen.append({s: p.value for s, p in proposals.items()})
        value, concede, reason = self.moves[min(round, len(self.moves)) - 1]
        return Proposal(self.source, value, concede, reason)


def hold(source: str, value: Any) -> Scripted:
    return Scripted(source, (value, False, "I stand by it"))


# ------------------------------------------------------------------ priority


def test_priority_strategy_records_the_resolution() -> None:
    conflict = data_conflict(513_000, 522_000, confidence=None)
    record = resolve(conflict, ResolverConfig("priority", ranks={"a": 2, "b": 1}))
    assert (record.decided_by, record.value) == ("priority", 522_000)
    assert record.priority is not None and record.priority.winner.source == "b"
    assert record.why == "b's value has the best rank (1, against a's 2; lower wins)"
    assert record.steps[-1] == f"decided by priority: {record.why}"


def test_priority_by_freshness() -> None:
    conflict = Conflict("resource", "gpu-0", [Claim("a", "a", updated_at=5.0),
                                              Claim("b", "b", updated_at=6.0)])
    record = resolve(conflict, ResolverConfig("priority", priority="freshness"))
    assert record.value == "b" and "newest" in record.why


# ------------------------------------------------------------------ vote


def test_vote_strategy_puts_the_values_to_a_vote() -> None:
    conflict = data_conflict({"n": 513_000}, {"n": 522_000})
    voters = voting_for(x={"n": 522_000}, y={"n": 522_000}, z={"n": 513_000})
    record = resolve(conflict, ResolverConfig("vote"), voters=voters)
    assert (record.decided_by, record.value) == ("vote", {"n": 522_000})
    assert record.vote is not None
    assert record.vote.options == ['{"n": 513000}', '{"n": 522000}']
    assert record.why.startswith('the vote chose {"n": 522000}: ')
    assert not record.person_asked


def test_an_undecided_vote_goes_to_the_person() -> None:
    conflict = data_conflict(1, 2)
    person = Person(3)
    record = resolve(conflict, ResolverConfig("vote"), voters=voting_for(x=1, y=2),
                     person=person)
    assert (record.decided_by, record.value, record.person_answer) == ("person", 3, 3)
    assert len(person.asked) == 1 and person.asked[0].startswith("the vote did not decide")
    assert record.why.endswith("a person chose 3")


def test_vote_strategy_without_voters_is_an_error() -> None:
    with pytest.raises(ConflictError, match="needs voters"):
        resolve(data_conflict(1, 2), ResolverConfig("vote"))


# ------------------------------------------------------------------ negotiation


def test_parties_converge_on_one_value() -> None:
    a = Scripted("a", (515_000, False, "splitting the difference"))
    b = Scripted("b", (518_000, False, "closer to mine"), (515_000, False, "fine"))
    record = resolve(data_conflict(510_000, 520_000),
                     ResolverConfig("negotiate", rounds_max=3), negotiators={"a": a, "b": b})
    assert (record.decided_by, record.value) == ("negotiation", 515_000)
    assert [r.number for r in record.rounds] == [1, 2]
    first = record.rounds[0]
    assert [(t.source, t.value, t.concede, t.reason) for t in first.turns] == [
        ("a", 515_000, False, "splitting the difference"),
        ("b", 518_000, False, "closer to mine")]
    assert record.why == "in round 2, every party proposes 515000"
    # Each party saw only the others' latest proposals: their claims, then round 1's.
    assert a.seen == [{"b": 520_000}, {"b": 518_000}]
    assert b.seen == [{"a": 510_000}, {"a": 515_000}]


def test_all_but_one_conceding_settles_on_the_holdout() -> None:
    parties = {"a": hold("a", "blue"),
               "b": Scripted("b", ("green", True, "a knows the brand")),
               "c": Scripted("c", ("red", False, "red is bolder"),
                             ("red", True, "outvoted"))}
    record = resolve(data_conflict("blue", "green", "red"), ResolverConfig("negotiate"),
                     negotiators=parties)
    assert (record.decided_by, record.value) == ("negotiation", "blue")
    assert record.rounds[0].result == '2 parties still hold out: a for "blue", c for "red"'
    assert record.why == 'in round 2, every other party conceded to a, whose proposal "blue" ' \
                         'stands'
    assert "c concedes, last proposing \"red\" (outvoted)" in record.steps[-2]


def test_claims_that_already_agree_need_no_round() -> None:
    record = resolve(data_conflict(7, 7), ResolverConfig("negotiate"),
                     negotiators={"a": hold("a", 1), "b": hold("b", 2)})
    assert record.decided_by == "negotiation" and record.value == 7 and record.rounds == []


def test_out_of_rounds_falls_back_to_a_vote_on_the_latest_proposals() -> None:
    parties = {"a": Scripted("a", (11, False, "")), "b": Scripted("b", (21, False, ""))}
    voters = voting_for(x=21, y=21, z=11)
    record = resolve(data_conflict(10, 20), ResolverConfig("negotiate", rounds_max=2),
                     negotiators=parties, voters=voters)
    assert len(record.rounds) == 2
    assert record.vote is not None and record.vote.options == ["11", "21"]
    assert (record.decided_by, record.value) == ("vote", 21)
    assert record.why.startswith("no agreement after 2 rounds (2 parties still hold out: "
                                 "a for 11, b for 21); the vote chose 21")


def test_out_of_rounds_without_voters_goes_to_the_person() -> None:
    person = Person(15)
    record = resolve(data_conflict(10, 20), ResolverConfig("negotiate", rounds_max=1),
                     negotiators={"a": hold("a", 10), "b": hold("b", 20)}, person=person)
    assert (record.decided_by, record.value) == ("person", 15)
    assert person.asked == ["no agreement after 1 round (2 parties still hold out: a for 10, "
                            "b for 20); no voters were given for the fallback vote"]


def test_fallback_person_skips_the_vote() -> None:
    person = Person(None)
    record = resolve(data_conflict(10, 20),
                     ResolverConfig("negotiate", rounds_max=1, fallback="person"),
                     negotiators={"a": hold("a", 10), "b": hold("b", 20)},
                     voters=voting_for(x=10), person=person)
    assert record.vote is None and record.person_asked
    assert record.decided_by == "nobody" and not record.resolved and record.value is None
    assert record.why.endswith("the person made no choice")


def test_unresolved_when_nobody_can_decide() -> None:
    record = resolve(data_conflict(10, 20), ResolverConfig("negotiate", rounds_max=2),
                     negotiators={"a": hold("a", 10), "b": hold("b", 20)},
                     voters=voting_for(x=10, y=20))
    assert record.decided_by == "nobody" and record.vote is not None
    assert record.why.endswith("no person was given to decide")
    assert record.steps[-1].startswith("unresolved: no agreement after 2 rounds")


def test_a_silent_or_failing_party_keeps_its_previous_proposal() -> None:
    never = anyio.Event()

    class Silent:
        async def counter(self, conflict: Conflict, round: int,
                          proposals: Mapping[str, Proposal]) -> Proposal:
            await never.wait()
            raise AssertionError("never set")

    class Failing:
        async def counter(self, conflict: Conflict, round: int,
                          proposals: Mapping[str, Proposal]) -> Proposal:
            raise RuntimeError("model unavailable")

    class Impostor:
        async def counter(self, conflict: Conflict, round: int,
                          proposals: Mapping[str, Proposal]) -> Proposal:
            return Proposal("a", 1, concede=True)

    record = resolve(data_conflict(1, 2, 3, 4),
                     ResolverConfig("negotiate", rounds_max=1, timeout_s=0.2),
                     negotiators={"a": hold("a", 1), "b": Silent(), "c": Failing(),
                                  "d": Impostor()})
    turns = {t.source: t for t in record.rounds[0].turns}
    assert turns["a"].answered
    assert (turns["b"].answered, turns["b"].value) == (False, 2)
    assert turns["b"].problem == "no counter-proposal within 0.2 s; its previous proposal stands"
    assert turns["c"].problem.startswith("failed: RuntimeError: model unavailable")
    assert turns["d"].problem.startswith("the proposal names 'a', not 'd'")
    assert record.decided_by == "nobody"


def test_negotiators_must_match_the_parties() -> None:
    with pytest.raises(ConflictError, match="no negotiator for b"):
        resolve(data_conflict(1, 2), ResolverConfig("negotiate"),
                negotiators={"a": hold("a", 1)})
    with pytest.raises(ConflictError, match="without a claim in the conflict: z"):
        resolve(data_conflict(1, 2), ResolverConfig("negotiate"),
                negotiators={"a": hold("a", 1), "b": hold("b", 2), "z": hold("z", 3)})
    with pytest.raises(ConflictError, match="needs a negotiator"):
        resolve(data_conflict(1, 2), ResolverConfig("negotiate"))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(("fields", "message"), [
    ({"strategy": "coin"}, "strategy 'coin'"),
    ({"priority": "age"}, "priority 'age'"),
    ({"ranks": {"a": "1"}}, "ranks"),
    ({"rounds_max": 0}, r"rounds_max \(0\)"),
    ({"fallback": "shrug"}, "fallback 'shrug'"),
    ({"rule": "majority"}, "rule must be a VotingRule"),
    ({"timeout_s": 0}, r"timeout_s \(0\)"),
    ({"timeout_s": float("inf")}, "timeout_s"),
])
def test_bad_resolver_configs_name_the_value(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResolverConfig(**({"strategy": "negotiate"} | fields))


def test_conflicts_are_checked() -> None:
    with pytest.raises(ConflictError, match="a's value is not JSON"):
        Conflict("data", "x", [Claim("a", {1, 2})])
    with pytest.raises(ConflictError, match="kind 'opinion'"):
        Conflict("opinion", "x", [Claim("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ConflictError, match="more than one claim"):
        Conflict("data", "x", [Claim("a", 1), Claim("a", 2)])
    with pytest.raises(ConflictError, match="subject"):
        Conflict("data", " ", [Claim("a", 1)])
    with pytest.raises(ConflictError, match="concede"):
        Proposal("a", 1, concede="yes")  # type: ignore[arg-type]


def test_the_record_says_who_decided_what_and_why() -> None:
    record = resolve(data_conflict("blue", "red"), ResolverConfig("negotiate"),
                     negotiators={"a": hold("a", "blue"),
                                  "b": Scripted("b", ("red", True, "fine by me"))})
    data = record.to_json()
    assert data["decided_by"] == "negotiation" and data["value"] == "blue"
    assert data["rounds"][0]["turns"][1] == {
        "source": "b", "value": "red", "concede": True, "reason": "fine by me",
        "answered": True, "problem": ""}
    assert data["conflict"]["claims"][0]["source"] == "a"
    assert data["steps"] == [
        'round 1: a proposes "blue" (I stand by it); b concedes, last proposing "red" '
        '(fine by me) -> every other party conceded to a, whose proposal "blue" stands',
        'decided by negotiation: in round 1, every other party conceded to a, whose '
        'proposal "blue" stands']


def test_vote_rule_of_the_config_is_used() -> None:
    conflict = data_conflict(1, 2)
    voters = voting_for(x=1, y=1, z=2)
    unanimous = resolve(conflict, ResolverConfig("vote", rule=VotingRule("unanimous")),
                        voters=voters)
    assert unanimous.decided_by == "nobody" and "not unanimous" in unanimous.why
