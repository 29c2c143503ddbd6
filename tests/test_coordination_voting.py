"""Voting: the tally's rules and reasons, replaced ballots, ties, quorum, and run_vote's
timeouts, invalid ballots and escalation to a person."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.coordination.voting import (
    Ballot,
    VoteError,
    VoteOutcome,
    VoteRecord,
    VotingRule,
    run_vote,
    tally,
)
from mesh.errors import ConfigError, MeshError

pytestmark = pytest.mark.timeout(30)

MAJORITY = VotingRule("majority")
SUPER = VotingRule("supermajority")
UNANIMOUS = VotingRule("unanimous")
PLURALITY = VotingRule("plurality")


def ballots(*choices: str, **weights: float) -> list[Ballot]:
    """One ballot per choice, voters v0, v1, ... (weights by voter name)."""
    return [Ballot(f"v{i}", choice, weight=weights.get(f"v{i}", 1.0))
            for i, choice in enumerate(choices)]


def one_state(outcome: VoteOutcome) -> None:
    assert [outcome.decided, outcome.still_possible, outcome.escalate].count(True) == 1


# ------------------------------------------------------------------ majority


def test_majority_of_the_ballots_cast_decides() -> None:
    outcome = tally(ballots("ship", "ship", "ship", "hold", "hold"), MAJORITY)
    assert (outcome.decided, outcome.choice, outcome.escalate) == (True, "ship", False)
    assert outcome.reason == "'ship' has 3 of 5 votes (60%), more than half"
    assert outcome.counts == {"ship": 3, "hold": 2}


def test_half_is_not_a_majority_and_a_tie_escalates() -> None:
    outcome = tally(ballots("ship", "ship", "hold", "hold"), MAJORITY)
    assert not outcome.decided and outcome.choice is None and outcome.escalate
    assert outcome.tied == ["hold", "ship"]
    assert "'hold' and 'ship' tie with 2 of 4 votes each (50%), not more than half" \
        in outcome.reason


def test_with_an_electorate_absent_voters_count_against() -> None:
    # 3 of 5 cast for ship is a majority of the ballots but not of the 7 expected.
    outcome = tally(ballots("ship", "ship", "ship", "hold", "hold"), MAJORITY, electorate=7)
    assert not outcome.decided and outcome.still_possible and not outcome.escalate
    assert outcome.reason.startswith("'ship' has 3 of 7 votes (43%), not more than half")
    assert "2 expected voters have not voted yet, so a decision is still possible" \
        in outcome.reason
    assert outcome.missing == 2 and outcome.base == 7


def test_a_majority_of_the_electorate_decides_before_everyone_voted() -> None:
    outcome = tally(ballots("ship", "ship", "ship", "ship"), MAJORITY, electorate=7)
    assert outcome.decided and outcome.choice == "ship"
    assert outcome.reason == "'ship' has 4 of 7 votes (57%), more than half"


def test_a_majority_no_longer_reachable_escalates_before_everyone_voted() -> None:
    # 6 expected, one left: the best any choice can reach is 3 of 6, not more than half.
    outcome = tally(ballots("ship", "ship", "hold", "hold", "wait"), MAJORITY, electorate=6)
    assert not outcome.decided and outcome.escalate and not outcome.still_possible
    assert "the 1 voter still expected cannot change that" in outcome.reason


def test_a_closed_vote_counts_the_missing_voters_against() -> None:
    outcome = tally(ballots("ship", "ship", "hold"), MAJORITY, electorate=5, closed=True)
    assert not outcome.decided and outcome.escalate
    assert outcome.reason == ("'ship' has 2 of 5 votes (40%), not more than half; "
                              "2 expected voters did not vote, which counts against")


# ------------------------------------------------------------------ supermajority


def test_supermajority_reason_names_the_share_and_the_threshold() -> None:
    outcome = tally(ballots("ship", "ship", "ship", "hold", "hold"), SUPER)
    assert not outcome.decided and outcome.escalate
    assert outcome.reason == "'ship' has 3 of 5 votes (60%), below the supermajority of 67%"


def test_supermajority_is_reached_exactly_at_the_threshold() -> None:
    outcome = tally(ballots("ship", "ship", "hold"), SUPER)
    assert outcome.decided and outcome.choice == "ship"
    assert outcome.reason == "'ship' has 2 of 3 votes (67%), at least the supermajority of 67%"
    three_quarters = VotingRule("supermajority", threshold=0.75)
    assert tally(ballots("a", "a", "a", "b"), three_quarters).decided
    assert not tally(ballots("a", "a", "b"), three_quarters).decided


def test_supermajority_shows_decimals_when_whole_percents_look_equal() -> None:
    rule = VotingRule("supermajority", threshold=0.7, weighted=True)
    outcome = tally(ballots("ship", "hold", v0=6.99, v1=3.01), rule)
    assert not outcome.decided
    assert "(69.9%), below the supermajority of 70.0%" in outcome.reason


def test_supermajority_with_an_electorate() -> None:
    early = tally(ballots("ship", "ship", "ship", "ship"), SUPER, electorate=6)
    assert early.decided and early.choice == "ship"
    waiting = tally(ballots("ship", "ship", "ship"), SUPER, electorate=6)
    assert waiting.still_possible and "(50%)" in waiting.reason
    # 2 + 2 remaining would be 4 of 6, enough; 2 + 1 remaining is 3 of 5, not enough.
    assert tally(ballots("ship", "ship", "hold", "hold"), SUPER, electorate=6).still_possible
    lost = tally(ballots("ship", "ship", "hold", "hold"), SUPER, electorate=5)
    assert lost.escalate and "the 1 voter still expected cannot change that" in lost.reason


# ------------------------------------------------------------------ unanimous


def test_unanimous() -> None:
    outcome = tally(ballots("ship", "ship", "ship"), UNANIMOUS)
    assert outcome.decided and outcome.reason == "unanimous: all 3 voters voted 'ship'"
    split = tally(ballots("ship", "ship", "hold"), UNANIMOUS, electorate=5)
    assert split.escalate and split.reason.startswith("not unanimous: 'ship' 2 votes, "
                                                      "'hold' 1 vote")


def test_unanimity_of_the_electorate_needs_everyone() -> None:
    waiting = tally(ballots("ship", "ship"), UNANIMOUS, electorate=3)
    assert waiting.still_possible and "not yet unanimous" in waiting.reason
    closed = tally(ballots("ship", "ship"), UNANIMOUS, electorate=3, closed=True)
    assert closed.escalate and "1 expected voter did not vote" in closed.reason
    everyone = tally(ballots("ship", "ship", "ship"), UNANIMOUS, electorate=3)
    assert everyone.decided
    assert everyone.reason == "unanimous: all 3 expected voters voted 'ship'"


# ------------------------------------------------------------------ plurality


def test_plurality_decides_on_the_most_votes() -> None:
    outcome = tally(ballots("ship", "ship", "ship", "hold", "hold", "wait"), PLURALITY)
    assert outcome.decided and outcome.choice == "ship"
    assert outcome.reason == ("'ship' has the most votes: 3 of 6 votes (50% of the ballots "
                              "cast), against 2 votes for 'hold'")


def test_a_plurality_tie_is_never_decided_and_escalates() -> None:
    outcome = tally(ballots("ship", "hold", "ship", "hold", "wait"), PLURALITY)
    assert not outcome.decided and outcome.escalate
    assert outcome.tied == ["hold", "ship"]
    assert outcome.reason.endswith("a tie is never decided")


def test_plurality_with_an_electorate_decides_once_the_lead_cannot_be_caught() -> None:
    close = tally(ballots("ship", "ship", "hold"), PLURALITY, electorate=4)
    assert close.still_possible and "could make 'hold' tie or overtake it" in close.reason
    safe = tally(ballots("ship", "ship", "ship", "hold"), PLURALITY, electorate=5)
    assert safe.decided and safe.choice == "ship"
    # Relative to the ballots cast, not to the electorate.
    assert "3 of 4 votes (75% of the ballots cast)" in safe.reason
    tied_open = tally(ballots("ship", "hold"), PLURALITY, electorate=3)
    assert tied_open.still_possible and tied_open.tied == ["hold", "ship"]


# ------------------------------------------------------------------ weights


def test_weighted_ballots_count_their_weight() -> None:
    votes = ballots("ship", "hold", "hold", v0=3.0)
    weighted = tally(votes, VotingRule("majority", weighted=True))
    assert weighted.decided and weighted.choice == "ship"
    assert weighted.reason == "'ship' has weight 3 of 5 (60%), more than half"
    assert weighted.counts == {"ship": 3.0, "hold": 2.0}
    # The same ballots unweighted.
    assert tally(votes, MAJORITY).choice == "hold"


def test_weighted_with_an_electorate_counts_absent_voters_as_weight_one() -> None:
    rule = VotingRule("majority", weighted=True)
    outcome = tally(ballots("ship", "hold", v0=2.0, v1=1.5), rule, electorate=4, closed=True)
    assert outcome.base == pytest.approx(5.5)
    assert not outcome.decided and outcome.escalate
    assert any("counts against with weight 1" in note for note in outcome.notes)


def test_weighted_ties_survive_float_noise() -> None:
    rule = VotingRule("plurality", weighted=True)
    outcome = tally(ballots("a", "a", "b", v0=0.1, v1=0.2, v2=0.3), rule)
    assert outcome.tied == ["a", "b"] and not outcome.decided


# ------------------------------------------------------------------ replaced ballots


def test_a_later_ballot_replaces_the_earlier_and_the_notes_say_so() -> None:
    votes = [Ballot("alice", "hold", at=1.0), Ballot("bob", "ship"),
             Ballot("alice", "ship", at=2.0)]
    outcome = tally(votes, MAJORITY)
    assert outcome.counts == {"ship": 2} and outcome.voters == ["alice", "bob"]
    assert outcome.notes == ["alice voted more than once: the ballot for 'ship' (at 2) "
                             "replaces the one for 'hold' (at 1)"]


def test_an_older_ballot_given_later_does_not_replace_a_newer_one() -> None:
    votes = [Ballot("alice", "ship", at=5.0), Ballot("alice", "hold", at=3.0)]
    outcome = tally(votes, MAJORITY)
    assert outcome.counts == {"ship": 1}
    assert "the ballot for 'ship' (at 5) replaces the one for 'hold' (at 3)" in outcome.notes[0]


def test_on_equal_times_the_ballot_given_last_stands() -> None:
    votes = [Ballot("alice", "ship"), Ballot("alice", "hold"), Ballot("alice", "wait")]
    outcome = tally(votes, MAJORITY)
    assert outcome.counts == {"wait": 1} and len(outcome.notes) == 2


# ------------------------------------------------------------------ quorum and errors


def test_nothing_is_decided_before_the_quorum() -> None:
    rule = VotingRule("majority", quorum=3)
    open_vote = tally(ballots("ship", "ship"), rule, electorate=5)
    assert open_vote.still_possible and not open_vote.decided
    assert open_vote.reason == ("2 ballots of the quorum of 3 cast so far; "
                                "3 voters may still vote")
    final = tally(ballots("ship", "ship"), rule)
    assert final.escalate and final.reason == "2 ballots cast, below the quorum of 3"
    assert tally(ballots("ship", "ship", "ship"), rule).decided
    unreachable = tally(ballots("ship"), VotingRule("majority", quorum=4), electorate=3)
    assert unreachable.escalate and "cannot make up" in unreachable.reason


def test_before_the_quorum_a_rule_already_out_of_reach_escalates() -> None:
    split = tally(ballots("ship", "hold"), VotingRule("unanimous", quorum=3), electorate=5)
    assert split.escalate and not split.still_possible
    assert split.reason.startswith("2 ballots of the quorum of 3 cast so far, and whatever "
                                   "the rest vote: not unanimous")


def test_no_ballots_at_all() -> None:
    outcome = tally([], MAJORITY)
    assert outcome.escalate and outcome.reason == "0 ballots cast, below the quorum of 1"


def test_more_voters_than_the_electorate_is_an_error() -> None:
    with pytest.raises(VoteError, match="3 voters cast ballots, more than the electorate of 2"):
        tally(ballots("a", "b", "c"), MAJORITY, electorate=2)
    with pytest.raises(VoteError, match="electorate"):
        tally(ballots("a"), MAJORITY, electorate=0)
    with pytest.raises(VoteError, match="ballot 1 is a str"):
        tally([Ballot("v", "a"), "b"], MAJORITY)  # type: ignore[list-item]


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "consensus"}, "kind 'consensus'"),
    ({"threshold": 0.5}, r"threshold \(0.5\)"),
    ({"threshold": 1.5}, r"threshold \(1.5\)"),
    ({"threshold": float("nan")}, "threshold"),
    ({"quorum": 0}, r"quorum \(0\)"),
    ({"quorum": True}, r"quorum \(True\)"),
    ({"weighted": "yes"}, "weighted"),
])
def test_bad_rules_are_config_errors_naming_the_value(fields: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VotingRule(**fields)


@pytest.mark.parametrize(("fields", "message"), [
    ({"voter": ""}, "voter"),
    ({"choice": " "}, "choice"),
    ({"weight": 0}, "weight"),
    ({"weight": float("inf")}, "weight"),
    ({"at": float("nan")}, "time"),
    ({"reason": "x" * 2000}, "reason"),
])
def test_bad_ballots_are_vote_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(VoteError, match=message):
        Ballot(**({"voter": "v", "choice": "a"} | fields))


# ------------------------------------------------------------------ properties

choice_st = st.sampled_from(["a", "b", "c"])
ballot_st = st.builds(Ballot, voter=st.sampled_from([f"v{i}" for i in range(6)]),
                      choice=choice_st, weight=st.sampled_from([0.5, 1.0, 2.0]),
                      at=st.integers(0, 3).map(float))
rule_st = st.builds(VotingRule, kind=st.sampled_from(["majority", "supermajority",
                                                      "unanimous", "plurality"]),
                    threshold=st.sampled_from([0.6, 2 / 3, 0.75, 1.0]),
                    quorum=st.integers(1, 4), weighted=st.booleans())


@settings(max_examples=300, deadline=None)
@given(votes=st.lists(ballot_st, max_size=10), rule=rule_st,
       extra=st.none() | st.integers(0, 3), closed=st.booleans())
def test_exactly_one_state_and_a_reason(votes: list[Ballot], rule: VotingRule,
                                        extra: int | None, closed: bool) -> None:
    voters = len({b.voter for b in votes})
    electorate = None if extra is None or voters + extra == 0 else voters + extra
    outcome = tally(votes, rule, electorate=electorate, closed=closed)
    one_state(outcome)
    assert outcome.reason
    assert (outcome.choice is not None) == outcome.decided
    if outcome.decided:
        assert not outcome.tied and outcome.choice == next(iter(outcome.counts))
    json.dumps(outcome.to_json())


@settings(max_examples=200, deadline=None)
@given(votes=st.lists(ballot_st, max_size=10, unique_by=lambda b: b.voter), rule=rule_st,
       data=st.data())
def test_the_order_of_one_ballot_per_voter_does_not_matter(votes: list[Ballot],
                                                           rule: VotingRule,
                                                           data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(votes))
    assert tally(votes, rule) == tally(shuffled, rule)


@settings(max_examples=200, deadline=None)
@given(votes=st.lists(ballot_st, min_size=1, max_size=6, unique_by=lambda b: b.voter),
       rule=rule_st)
def test_a_decision_still_possible_is_reachable(votes: list[Ballot], rule: VotingRule) -> None:
    """When a tally says a decision is still possible, some way of voting for the
    remaining voters decides it (and an escalation means none does)."""
    electorate = len(votes) + 2
    outcome = tally(votes, rule, electorate=electorate)
    if outcome.decided:
        return
    reachable = any(
        tally([*votes, Ballot("x1", first), Ballot("x2", second)], rule,
              electorate=electorate).decided
        for first in ["a", "b", "c", "d"] for second in ["a", "b", "c", "d"])
    if not rule.weighted:  # weighted: remaining voters may carry other weights than 1
        assert reachable == outcome.still_possible


# ------------------------------------------------------------------ run_vote


def voter(choice: str, *, name: str | None = None, weight: float = 1.0) -> Callable[
        [str, Sequence[str]], Awaitable[Ballot]]:
    async def vote(question: str, options: Sequence[str]) -> Ballot:
        assert question and options
        return Ballot(name or f"for-{choice}", choice, weight=weight, reason="because")
    return vote


def named(**choices: str) -> dict[str, Callable[[str, Sequence[str]], Awaitable[Ballot]]]:
    return {name: voter(choice, name=name) for name, choice in choices.items()}


def vote(voters: Any, rule: VotingRule = MAJORITY, *, timeout_s: float = 5.0,
         options: Sequence[str] = ("ship", "hold"), escalate: Any = None) -> VoteRecord:
    async def main() -> VoteRecord:
        return await run_vote("ship the release?", voters, options, rule,
                              timeout_s=timeout_s, escalate=escalate)
    return anyio.run(main)


class Person:
    """An escalation callback that records each call."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls: list[VoteOutcome] = []

    async def __call__(self, outcome: VoteOutcome) -> str | None:
        self.calls.append(outcome)
        return self.answer


def test_a_decided_vote_is_recorded_as_decided_by_the_vote() -> None:
    person = Person("hold")
    record = vote(named(a="ship", b="ship", c="hold"), escalate=person)
    assert (record.decided_by, record.choice, record.escalated) == ("vote", "ship", False)
    assert person.calls == []
    assert record.why == "'ship' has 2 of 3 votes (67%), more than half"
    assert [b.voter for b in record.ballots] == ["a", "b", "c"]
    data = json.loads(json.dumps(record.to_json()))
    assert data["decided_by"] == "vote" and data["ballots"][0]["reason"] == "because"


def test_late_voters_are_absent_and_not_waited_for() -> None:
    never = anyio.Event()
    reached = []

    async def stuck(question: str, options: Sequence[str]) -> Ballot:
        reached.append(True)
        await never.wait()
        raise AssertionError("never set")

    voters = named(a="ship", b="hold") | {"slow": stuck}

    async def main() -> tuple[VoteRecord, float]:
        started = anyio.current_time()
        record = await run_vote("ship?", voters, ["ship", "hold"], MAJORITY, timeout_s=0.2)
        return record, anyio.current_time() - started

    record, elapsed = anyio.run(main)
    assert reached and record.absent == ["slow"]
    assert 0.2 <= elapsed < 2.0
    assert [b.voter for b in record.ballots] == ["a", "b"]
    assert record.decided_by == "nobody"
    assert "1 expected voter did not vote, which counts against" in record.why
    assert "no one to escalate to" in record.why


def test_absent_voters_count_against_a_majority() -> None:
    never = anyio.Event()

    async def stuck(question: str, options: Sequence[str]) -> Ballot:
        await never.wait()
        raise AssertionError("never set")

    record = vote(named(a="ship", b="ship") | {"c": stuck, "d": stuck, "e": stuck},
                  timeout_s=0.1)
    assert record.absent == ["c", "d", "e"] and record.decided_by == "nobody"
    assert record.outcome.reason.startswith("'ship' has 2 of 5 votes (40%)")


def test_invalid_ballots_are_recorded_with_why() -> None:
    async def not_a_ballot(question: str, options: Sequence[str]) -> Ballot:
        return "ship"  # type: ignore[return-value]

    async def failing(question: str, options: Sequence[str]) -> Ballot:
        raise RuntimeError("model unavailable")

    async def malformed(question: str, options: Sequence[str]) -> Ballot:
        return Ballot("m", "ship", weight=-1)

    voters = {"a": voter("ship", name="a"), "b": voter("maybe", name="b"),
              "c": voter("ship", name="someone-else"), "d": not_a_ballot, "e": failing,
              "f": malformed, "g": voter("ship", name="g")}
    record = vote(voters)
    why = {i.voter: i.why for i in record.invalid}
    assert why == {
        "b": "'maybe' is not one of the options 'ship', 'hold'",
        "c": "the ballot names voter 'someone-else', not 'c'",
        "d": "returned a str, not a Ballot",
        "e": "the voter failed: RuntimeError: model unavailable",
        "f": why["f"],
    }
    assert why["f"].startswith("the voter failed: VoteError: m's ballot weight (-1)")
    assert [b.voter for b in record.ballots] == ["a", "g"]
    # The five invalid ballots count against: 2 of 7 is no majority.
    assert record.decided_by == "nobody" and record.outcome.base == 7
    json.dumps(record.to_json())


def test_an_undecided_vote_escalates_to_a_person_once() -> None:
    person = Person("hold")
    record = vote(named(a="ship", b="hold"), escalate=person)
    assert len(person.calls) == 1 and person.calls[0].escalate
    assert person.calls[0].tied == ["hold", "ship"]
    assert (record.decided_by, record.choice, record.escalated, record.escalation) == (
        "person", "hold", True, "hold")
    assert record.why.endswith("a person chose 'hold'")
    assert json.loads(json.dumps(record.to_json()))["decided_by"] == "person"


def test_a_person_who_makes_no_choice_leaves_it_undecided() -> None:
    person = Person(None)
    record = vote(named(a="ship", b="hold"), rule=PLURALITY, escalate=person)
    assert len(person.calls) == 1 and record.decided_by == "nobody" and not record.decided
    assert record.why.endswith("the person made no choice")
    bogus = vote(named(a="ship", b="hold"), escalate=Person("launch"))
    assert bogus.decided_by == "nobody"
    assert "the person's choice 'launch' is not one of the options" in bogus.why


def test_run_vote_refuses_malformed_arguments() -> None:
    with pytest.raises(VoteError, match="at least one option"):
        vote(named(a="ship"), options=())
    with pytest.raises(VoteError, match="listed twice"):
        vote(named(a="ship"), options=("ship", "ship"))
    with pytest.raises(VoteError, match="at least one voter"):
        vote({})
    with pytest.raises(ConfigError, match=r"timeout_s \(0\)"):
        vote(named(a="ship"), timeout_s=0)
    assert issubclass(VoteError, MeshError)
