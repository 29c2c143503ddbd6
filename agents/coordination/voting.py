"""Voting among agents: ballots, a tally that says why, and a bounded vote with escalation.

How this works
--------------
A *ballot* is one voter's choice, with an optional weight, a reason and the time
it was cast (``at``). ``tally(ballots, rule)`` counts them under a ``VotingRule``:

``majority``
    a choice with strictly more than half of the votes wins;
``supermajority``
    a choice with at least ``threshold`` (more than half, at most all) wins;
``unanimous``
    every vote, and with an electorate every expected voter, for one choice;
``plurality``
    the choice with strictly the most votes wins; a tie for the most is never
    decided (there is no fair way to break it) and goes to a person.

Each voter counts once: when a voter cast several ballots the one with the
latest ``at`` stands (on equal ``at``, the one given last), and the outcome's
``notes`` say which ballot was dropped. Nothing is decided before ``quorum``
voters have voted. With ``weighted`` a ballot counts its ``weight``, otherwise 1.

What percentages are relative to: without an electorate, to the ballots cast.
With ``electorate`` (the number of voters expected), majority, supermajority and
unanimity are relative to the electorate, so a voter who has not voted counts
against every choice (a majority means a majority of everyone asked, not of
whoever bothered to answer); plurality stays relative to the ballots cast, as it
only compares choices with each other. Weighted, a voter who has not voted is
counted with weight 1 (the default weight: the tally cannot know the weight of a
ballot that was never cast).

Knowing the electorate, a tally taken while votes still come in tells whether a
decision is still possible (``still_possible``: enough voters are left to reach
the rule) or no longer (``escalate``), assuming each remaining voter votes once.
A rule already out of reach escalates even before the quorum is met (a split
unanimity stays split however many more vote).
``closed=True`` says the vote is over: those who have not voted will not. Exactly
one of ``decided``, ``still_possible`` and ``escalate`` holds.

``run_vote`` asks every voter at once (each a coroutine function taking the
question and the options) and bounds the whole vote by ``timeout_s``: a voter
that has not answered by then is recorded as absent and not waited for. A ballot
that names another voter, a choice outside the options, or a voter that fails,
is recorded as invalid with why (its voter then counts as not having voted).
When the closed tally decides nothing and an ``escalate`` callback is given, it
is awaited once with the outcome; it returns the choice a person made, or None.
The ``VoteRecord`` says who decided (the vote, a person, or nobody) and why.
The callback bounds its own wait (a person is asked through something with its
own deadline, such as a workflow approval gate).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import anyio

from mesh.errors import ConfigError, MeshError

__all__ = [
    "BALLOTS_MAX",
    "CHOICE_CHARS_MAX",
    "OPTIONS_MAX",
    "QUESTION_CHARS_MAX",
    "REASON_CHARS_MAX",
    "VOTERS_MAX",
    "VOTER_CHARS_MAX",
    "VOTE_TIMEOUT_S_MAX",
    "WEIGHT_MAX",
    "Ballot",
    "Escalate",
    "InvalidBallot",
    "VoteError",
    "VoteKind",
    "VoteOutcome",
    "VoteRecord",
    "Voter",
    "VotingRule",
    "run_vote",
    "tally",
]

VoteKind = Literal["majority", "supermajority", "unanimous", "plurality"]
"""The rules a vote can be decided by (see the module docstring)."""

VOTERS_MAX = 1024
"""Most voters in one vote (and the largest electorate and quorum)."""
BALLOTS_MAX = 4 * VOTERS_MAX
"""Most ballots in one tally, replaced ones included."""
OPTIONS_MAX = 64
"""Most options one vote offers."""
CHOICE_CHARS_MAX = 4096
"""Longest choice (an option's text; a conflict's values are offered as JSON text)."""
VOTER_CHARS_MAX = 128
"""Longest voter name."""
REASON_CHARS_MAX = 1024
"""Longest reason given with a ballot."""
QUESTION_CHARS_MAX = 4096
"""Longest question put to a vote."""
WEIGHT_MAX = 1e6
"""Largest weight of one ballot."""
VOTE_TIMEOUT_S_MAX = 86400.0
"""Longest a vote may be given to collect its ballots, in seconds."""

_KINDS: tuple[str, ...] = get_args(VoteKind)
# Weights are floats: sums of the same weights in another order may differ in
# their last bits, which must not turn a tie into a win (or the reverse).
_EPS = 1e-9


class VoteError(MeshError):
    """A ballot, a tally or a vote that is malformed (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Ballot:
    """One voter's choice, counted with ``weight`` when the rule is weighted."""

    voter: str
    choice: str
    weight: float = 1.0
    reason: str = ""
    at: float = 0.0
    """When it was cast (any clock the voters share); the latest ballot of a voter stands."""

    def __post_init__(self) -> None:
        _check_name(self.voter, "a ballot's voter", VOTER_CHARS_MAX, VoteError)
        _check_name(self.choice, f"{self.voter}'s choice", CHOICE_CHARS_MAX, VoteError)
        if (not _is_number(self.weight) or not math.isfinite(self.weight)
                or not 0 < self.weight <= WEIGHT_MAX):
            raise VoteError(f"{self.voter}'s ballot weight ({self.weight!r}) must be a number "
                            f"more than 0 and at most {WEIGHT_MAX:g}")
        if not isinstance(self.reason, str) or len(self.reason) > REASON_CHARS_MAX:
            raise VoteError(f"{self.voter}'s ballot reason must be text of at most "
                            f"{REASON_CHARS_MAX} characters")
        if not _is_number(self.at) or not math.isfinite(self.at):
            raise VoteError(f"{self.voter}'s ballot time ({self.at!r}) must be a finite number")

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VotingRule:
    """How ballots decide (see the module docstring for each kind)."""

    kind: VoteKind = "majority"
    threshold: float = 2 / 3
    """The share a supermajority needs: more than 0.5, at most 1 (unused by other kinds)."""
    quorum: int = 1
    """Voters who must have voted before anything is decided."""
    weighted: bool = False
    """Count each ballot's weight rather than 1."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"voting rule kind {self.kind!r} must be one of {list(_KINDS)}")
        if (not _is_number(self.threshold) or not math.isfinite(self.threshold)
                or not 0.5 < self.threshold <= 1):
            raise ConfigError(f"voting threshold ({self.threshold!r}) must be a number more "
                              "than 0.5 and at most 1")
        if type(self.quorum) is not int or not 1 <= self.quorum <= VOTERS_MAX:
            raise ConfigError(f"voting quorum ({self.quorum!r}) must be an integer from 1 "
                              f"to {VOTERS_MAX}")
        if type(self.weighted) is not bool:
            raise ConfigError(f"voting rule weighted ({self.weighted!r}) must be true or false")

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VoteOutcome:
    """What a tally found: decided or not, the choice, and exactly why."""

    decided: bool
    choice: str | None
    reason: str
    escalate: bool
    """Not decided and no longer decidable: a person should decide."""
    still_possible: bool
    """Not decided yet, but the voters still expected could decide it."""
    counts: dict[str, float]
    """Votes (or weight) per choice, most first, then by choice."""
    voters: list[str]
    """Whose ballots were counted, sorted."""
    rule: VotingRule
    electorate: int | None = None
    missing: int = 0
    """Expected voters with no ballot counted (0 without an electorate)."""
    base: float = 0.0
    """What the percentages are relative to (votes or weight)."""
    tied: list[str] = field(default_factory=list)
    """The choices sharing the most votes, when more than one does."""
    notes: list[str] = field(default_factory=list)
    """Ballots replaced by a later one of the same voter, and the like."""

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class InvalidBallot:
    """An answer that could not be counted, and why."""

    voter: str
    why: str
    ballot: Ballot | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"voter": self.voter, "why": self.why,
                "ballot": None if self.ballot is None else self.ballot.to_json()}


@dataclass(frozen=True, slots=True)
class VoteRecord:
    """A whole vote: what was asked, every answer (or its absence), and who decided."""

    question: str
    options: list[str]
    rule: VotingRule
    ballots: list[Ballot]
    """The valid ballots, in the voters' order."""
    absent: list[str]
    """Voters who had not answered when the vote's time was up."""
    invalid: list[InvalidBallot]
    outcome: VoteOutcome
    escalated: bool
    """Whether a person was asked (the vote decided nothing)."""
    escalation: str | None
    """The person's answer when asked (None: no choice made)."""
    decided_by: Literal["vote", "person", "nobody"]
    choice: str | None
    why: str

    @property
    def decided(self) -> bool:
        """Whether someone (the vote or a person) made a choice."""
        return self.decided_by != "nobody"

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"question": self.question, "options": list(self.options),
                "rule": self.rule.to_json(), "ballots": [b.to_json() for b in self.ballots],
                "absent": list(self.absent), "invalid": [i.to_json() for i in self.invalid],
                "outcome": self.outcome.to_json(), "escalated": self.escalated,
                "escalation": self.escalation, "decided_by": self.decided_by,
                "choice": self.choice, "why": self.why}


Voter = Callable[[str, Sequence[str]], Awaitable[Ballot]]
"""Asks one voter: takes the question and the options, returns its ballot."""
Escalate = Callable[[VoteOutcome], Awaitable[str | None]]
"""Asks a person about an undecided vote: the chosen option, or None."""


# ------------------------------------------------------------------ the tally


def tally(ballots: Iterable[Ballot], rule: VotingRule, *, electorate: int | None = None,
          closed: bool = False) -> VoteOutcome:
    """Count ``ballots`` under ``rule`` (see the module docstring).

    ``electorate`` is the number of voters expected; ``closed`` says those who
    have not voted will not any more. ``VoteError`` for a malformed argument or
    more voters than the electorate.
    """
    if not isinstance(rule, VotingRule):
        raise VoteError(f"the rule must be a VotingRule, not {type(rule).__name__}")
    listed = _ballot_list(ballots)
    if electorate is not None and (type(electorate) is not int
                                   or not 1 <= electorate <= VOTERS_MAX):
        raise VoteError(f"electorate ({electorate!r}) must be an integer from 1 to "
                        f"{VOTERS_MAX}")
    kept, notes = _latest_ballots(listed)
    voters = sorted(kept)
    if electorate is not None and len(voters) > electorate:
        raise VoteError(f"{len(voters)} voters cast ballots, more than the electorate of "
                        f"{electorate}")
    counts: dict[str, float] = {}
    for voter in voters:
        ballot = kept[voter]
        counts[ballot.choice] = counts.get(ballot.choice, 0) + (
            ballot.weight if rule.weighted else 1)
    ranking = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    missing = 0 if electorate is None else electorate - len(voters)
    if rule.weighted and missing and rule.kind != "plurality":
        notes.append(f"{_count(missing, 'expected voter')} without a ballot: each counts "
                     "against with weight 1")
    count = _Count(rule, ranking, len(voters), missing, 0 if closed else missing, electorate)
    decided, choice, possible, reason = count.verdict()
    return VoteOutcome(
        decided=decided, choice=choice, reason=reason,
        escalate=not decided and not possible, still_possible=not decided and possible,
        counts=dict(ranking), voters=voters, rule=rule, electorate=electorate,
        missing=missing, base=count.base, tied=count.tied(), notes=notes)


def _ballot_list(ballots: Iterable[Ballot]) -> list[Ballot]:
    if isinstance(ballots, str | bytes) or not isinstance(ballots, Iterable):
        raise VoteError("ballots must be an iterable of Ballot")
    listed: list[Ballot] = []
    for index, ballot in enumerate(ballots):
        if index >= BALLOTS_MAX:
            raise VoteError(f"more than {BALLOTS_MAX} ballots in one tally")
        if not isinstance(ballot, Ballot):
            raise VoteError(f"ballot {index} is a {type(ballot).__name__}, not a Ballot")
        listed.append(ballot)
    return listed


def _latest_ballots(listed: list[Ballot]) -> tuple[dict[str, Ballot], list[str]]:
    """Each voter's standing ballot (latest ``at``, then given last) and what was dropped."""
    latest: dict[str, tuple[float, int, Ballot]] = {}
    notes = []
    for index, ballot in enumerate(listed):
        entry = (ballot.at, index, ballot)
        previous = latest.get(ballot.voter)
        if previous is None:
            latest[ballot.voter] = entry
            continue
        keep, drop = (entry, previous) if entry[:2] > previous[:2] else (previous, entry)
        latest[ballot.voter] = keep
        notes.append(f"{ballot.voter} voted more than once: the ballot for "
                     f"{keep[2].choice!r} (at {keep[0]:g}) replaces the one for "
                     f"{drop[2].choice!r} (at {drop[0]:g})")
    return {voter: entry[2] for voter, entry in latest.items()}, notes


class _Count:
    """One tally's numbers and the sentences that explain them."""

    def __init__(self, rule: VotingRule, ranking: list[tuple[str, float]], voted: int,
                 missing: int, remaining: int, electorate: int | None) -> None:
        self.rule = rule
        self.ranking = ranking
        self.voted = voted
        self.missing = missing
        self.remaining = remaining
        self.electorate = electorate
        cast = sum(n for _, n in ranking)
        # Absent voters count against (with the default weight 1) except in a
        # plurality, which compares choices only.
        self.base = cast if rule.kind == "plurality" else cast + missing
        self.top_choice, self.top = ranking[0] if ranking else ("", 0.0)
        self.second = ranking[1][1] if len(ranking) > 1 else 0

    def tied(self) -> list[str]:
        leaders = [choice for choice, n in self.ranking if _same(n, self.top)]
        return leaders if len(leaders) > 1 else []

    def verdict(self) -> tuple[bool, str | None, bool, str]:
        """(decided, choice, still decidable, reason)."""
        quorum = self.rule.quorum
        if self.voted >= quorum:
            return self._by_rule()
        if self.voted + self.remaining < quorum:
            text = f"{_count(self.voted, 'ballot')} cast, below the quorum of {quorum}"
            if self.remaining:
                text += (f", which the {_count(self.remaining, 'voter')} still expected cannot "
                         "make up")
            return False, None, False, text + self._absent()
        # The quorum can still be met; whether the rule can then still be met too is
        # already known (a split unanimity stays split), and when it cannot, waiting
        # for the quorum would only delay the escalation.
        if self.voted:
            decided, _, possible, reason = self._by_rule()
            if not decided and not possible:
                return False, None, False, (
                    f"{_count(self.voted, 'ballot')} of the quorum of {quorum} cast so far, "
                    f"and whatever the rest vote: {reason}")
        return False, None, True, (
            f"{_count(self.voted, 'ballot')} of the quorum of {quorum} cast so far; "
            f"{_count(self.remaining, 'voter')} may still vote")

    def _by_rule(self) -> tuple[bool, str | None, bool, str]:
        if self.rule.kind == "plurality":
            return self._plurality()
        if self.rule.kind == "unanimous":
            return self._unanimous()
        return self._threshold()

    def _threshold(self) -> tuple[bool, str | None, bool, str]:
        if self.rule.kind == "majority":
            fraction, strict = 0.5, True
        else:
            fraction, strict = self.rule.threshold, False

        def reaches(amount: float) -> bool:
            needed = fraction * self.base
            return _more(amount, needed) if strict else not _more(needed, amount)

        share, limit = _percents(self.top / self.base, fraction)
        standard = "more than half" if strict else f"the supermajority of {limit}"
        tied = self.tied()
        head = (f"{_names(tied)} tie with {self._of(self.top)} each ({share})" if tied
                else f"{self.top_choice!r} has {self._of(self.top)} ({share})")
        if not tied and reaches(self.top):
            verb = "" if strict else "at least "
            return True, self.top_choice, False, f"{head}, {verb}{standard}{self._absent()}"
        gap = "not " + standard if strict else "below " + standard
        # The best any choice can still do: the leader (or a choice no one has
        # voted for yet) taking every remaining voter.
        possible = self.remaining > 0 and reaches(self.top + self.remaining)
        return False, None, possible, f"{head}, {gap}{self._future(possible)}"

    def _unanimous(self) -> tuple[bool, str | None, bool, str]:
        if len(self.ranking) > 1:
            return False, None, False, (
                f"not unanimous: {self._breakdown()}{self._future(False)}")
        if self.missing == 0:
            everyone = "expected voters" if self.electorate is not None else "voters"
            return True, self.top_choice, False, (
                f"unanimous: all {self.voted} {everyone} voted {self.top_choice!r}")
        share, _ = _percents(self.top / self.base, 1.0)
        possible = self.remaining > 0
        return False, None, possible, (
            f"{self.top_choice!r} has {self._of(self.top)} ({share}), "
            f"{'not yet' if possible else 'not'} unanimous{self._future(possible)}")

    def _plurality(self) -> tuple[bool, str | None, bool, str]:
        tied = self.tied()
        share, _ = _percents(self.top / self.base, 1.0)
        if tied:
            possible = self.remaining > 0
            text = (f"{_names(tied)} tie for the most with {self._of(self.top)} each "
                    f"({share} of the ballots cast)")
            if not possible:
                text += ": a tie is never decided"
            return False, None, possible, text + self._future(possible)
        # The runner-up (or a choice no one has voted for yet) taking every
        # remaining voter must still fall short of the leader.
        if _more(self.top, self.second + self.remaining):
            against = (f", against {self._amount(self.second)} for {self.ranking[1][0]!r}"
                       if len(self.ranking) > 1 else ", the only choice voted for")
            return True, self.top_choice, False, (
                f"{self.top_choice!r} has the most votes: {self._of(self.top)} "
                f"({share} of the ballots cast){against}{self._absent()}")
        runner = repr(self.ranking[1][0]) if len(self.ranking) > 1 else "another choice"
        return False, None, True, (
            f"{self.top_choice!r} leads with {self._of(self.top)} ({share} of the ballots "
            f"cast), but the {_count(self.remaining, 'voter')} still expected could make "
            f"{runner} tie or overtake it")

    def _future(self, possible: bool) -> str:
        if possible:
            return (f"; {_count(self.remaining, 'expected voter')} "
                    f"{'has' if self.remaining == 1 else 'have'} not voted yet, "
                    "so a decision is still possible")
        if self.remaining:
            return f"; the {_count(self.remaining, 'voter')} still expected cannot change that"
        return self._absent()

    def _absent(self) -> str:
        """Who was expected but did not vote, once the vote is over."""
        if not self.missing or self.remaining:
            return ""
        against = "" if self.rule.kind == "plurality" else ", which counts against"
        return f"; {_count(self.missing, 'expected voter')} did not vote{against}"

    def _of(self, part: float) -> str:
        """``part`` of the base: "3 of 5 votes", "weight 2.5 of 4"."""
        if self.rule.weighted:
            return f"weight {_number(part)} of {_number(self.base)}"
        return f"{round(part)} of {_count(round(self.base), 'vote')}"

    def _amount(self, amount: float) -> str:
        if self.rule.weighted:
            return f"weight {_number(amount)}"
        return _count(round(amount), "vote")

    def _breakdown(self) -> str:
        return ", ".join(f"{choice!r} {self._amount(n)}" for choice, n in self.ranking)


# ------------------------------------------------------------------ the vote


async def run_vote(question: str, voters: Mapping[str, Voter], options: Sequence[str],
                   rule: VotingRule, *, timeout_s: float,
                   escalate: Escalate | None = None) -> VoteRecord:
    """Ask every voter at once, within ``timeout_s`` in all, tally, escalate if undecided.

    See the module docstring. ``VoteError`` for a malformed question, voters or
    options; ``ConfigError`` for a timeout out of range.
    """
    _check_name(question, "the question", QUESTION_CHARS_MAX, VoteError)
    if not isinstance(voters, Mapping) or not voters:
        raise VoteError("a vote needs a mapping of at least one voter")
    if len(voters) > VOTERS_MAX:
        raise VoteError(f"{len(voters)} voters, more than {VOTERS_MAX}")
    for name, voter in voters.items():
        _check_name(name, "a voter's name", VOTER_CHARS_MAX, VoteError)
        if not callable(voter):
            raise VoteError(f"voter {name!r} is not callable")
    choices = _options(options)
    if not isinstance(rule, VotingRule):
        raise VoteError(f"the rule must be a VotingRule, not {type(rule).__name__}")
    _check_seconds(timeout_s, "the vote's timeout_s", VOTE_TIMEOUT_S_MAX)
    if escalate is not None and not callable(escalate):
        raise VoteError("escalate must be a coroutine function or None")

    answers: dict[str, object] = {}

    async def ask(name: str, voter: Voter) -> None:
        try:
            answers[name] = await voter(question, choices)
        except Exception as exc:  # a failing voter spoils its own ballot, not the vote
            answers[name] = InvalidBallot(name, f"the voter failed: {type(exc).__name__}: "
                                                f"{exc}")

    with anyio.move_on_after(timeout_s):
        async with anyio.create_task_group() as tg:
            for name, voter in voters.items():
                tg.start_soon(ask, name, voter)

    ballots: list[Ballot] = []
    absent: list[str] = []
    invalid: list[InvalidBallot] = []
    for name in voters:
        if name not in answers:
            absent.append(name)
            continue
        answer = answers[name]
        problem = answer if isinstance(answer, InvalidBallot) else _judge(name, answer, choices)
        if problem is not None:
            invalid.append(problem)
        else:
            assert isinstance(answer, Ballot)
            ballots.append(answer)

    outcome = tally(ballots, rule, electorate=len(voters), closed=True)
    escalated = False
    person: str | None = None
    if outcome.decided:
        decided_by: Literal["vote", "person", "nobody"] = "vote"
        choice, why = outcome.choice, outcome.reason
    elif escalate is None:
        decided_by, choice = "nobody", None
        why = f"the vote did not decide ({outcome.reason}) and there is no one to escalate to"
    else:
        escalated = True
        person = await escalate(outcome)
        if person is None:
            decided_by, choice = "nobody", None
            why = f"the vote did not decide ({outcome.reason}) and the person made no choice"
        elif person not in choices:
            decided_by, choice = "nobody", None
            why = (f"the vote did not decide ({outcome.reason}) and the person's choice "
                   f"{person!r} is not one of the options")
        else:
            decided_by, choice = "person", person
            why = f"the vote did not decide ({outcome.reason}); a person chose {person!r}"
    return VoteRecord(question=question, options=list(choices), rule=rule, ballots=ballots,
                      absent=absent, invalid=invalid, outcome=outcome, escalated=escalated,
                      escalation=person, decided_by=decided_by, choice=choice, why=why)


def _judge(name: str, answer: object, choices: tuple[str, ...]) -> InvalidBallot | None:
    """Why ``answer`` cannot be counted as ``name``'s ballot, or None when it can."""
    if not isinstance(answer, Ballot):
        return InvalidBallot(name, f"returned a {type(answer).__name__}, not a Ballot")
    if answer.voter != name:
        return InvalidBallot(name, f"the ballot names voter {answer.voter!r}, not {name!r}",
                             answer)
    if answer.choice not in choices:
        return InvalidBallot(name, f"{answer.choice!r} is not one of the options "
                                   f"{', '.join(repr(c) for c in choices)}", answer)
    return None


def _options(options: Sequence[str]) -> tuple[str, ...]:
    if isinstance(options, str | bytes) or not isinstance(options, Sequence) or not options:
        raise VoteError("a vote needs a sequence of at least one option")
    if len(options) > OPTIONS_MAX:
        raise VoteError(f"{len(options)} options, more than {OPTIONS_MAX}")
    for option in options:
        _check_name(option, "an option", CHOICE_CHARS_MAX, VoteError)
    if len(set(options)) != len(options):
        raise VoteError(f"an option is listed twice: {list(options)!r}")
    return tuple(options)


# ------------------------------------------------------------------ helpers


def _check_name(value: object, what: str, chars_max: int, error: type[MeshError]) -> None:
    if not isinstance(value, str) or not value.strip():
        raise error(f"{what} ({value!r}) must be non-empty text")
    if len(value) > chars_max:
        raise error(f"{what} ({value[:40]!r}...) has {len(value)} characters, more than "
                    f"{chars_max}")


def _check_seconds(value: object, what: str, high: float) -> None:
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or not 0 < value <= high):
        raise ConfigError(f"{what} ({value!r}) must be more than 0 and at most {high:g} seconds")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _more(a: float, b: float) -> bool:
    """``a > b`` beyond float noise."""
    return a > b + _EPS * max(1.0, abs(a), abs(b))


def _same(a: float, b: float) -> bool:
    return not _more(a, b) and not _more(b, a)


def _percents(share: float, limit: float) -> tuple[str, str]:
    """``share`` and ``limit`` as percentages, with enough decimals to tell them apart."""
    decimals = 0
    while decimals < 3 and not _same(share, limit) and (
            f"{share * 100:.{decimals}f}" == f"{limit * 100:.{decimals}f}"):
        decimals += 1
    return f"{share * 100:.{decimals}f}%", f"{limit * 100:.{decimals}f}%"


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(choices: Sequence[str]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
