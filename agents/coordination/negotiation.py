"""Conflict resolution between agents, with a record of who decided what and why.

How this works
--------------
A ``Conflict`` is several claims about one subject: a *data* conflict is
contradictory outputs for one question (two agents give two answers), a
*resource* conflict is several agents wanting one resource (each claims it for
itself, the value saying what it wants). ``resolve_conflict(conflict, config)``
settles it by the configured strategy:

``priority``
    ``agents.coordination.priority.resolve`` by rank, confidence or freshness:
    immediate and deterministic.
``vote``
    the distinct values (as JSON text, so values are compared by their JSON
    form) are put to the voters (``agents.coordination.voting.run_vote``); a vote
    that decides nothing goes to ``person`` when one is given.
``negotiate``
    bounded rounds. Every party starts from its claim. Each round every party,
    at once and each within ``timeout_s``, sees the others' latest proposals and
    answers a counter-proposal (the same value, a new one, or a concession).
    The parties agree when every latest proposal has the same value, or when
    all but one party concede (the one who holds out has its proposal). A party
    that does not answer in time, fails, or answers something malformed keeps its
    previous proposal, and the round's record says why. After ``rounds_max``
    rounds without agreement the latest proposals' values go to a vote
    (``fallback="vote"`` and voters given), then to the person; with
    ``fallback="person"`` straight to the person.

When no one decides (no person given, or the person makes no choice) the record
says ``decided_by="nobody"`` and why: a conflict is never settled silently.

Every step goes into the ``ResolutionRecord``: the priority resolution, each
round's proposals, concessions and reasons, the vote, the person's answer, and a
line per step in ``steps``; ``to_json()`` is its JSON form, to be stored where
the decision must be explained later. Waits are bounded: ``rounds_max`` rounds
of at most ``timeout_s`` each, a vote of at most ``timeout_s``; the person
callback bounds its own wait (as a workflow approval gate does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import anyio

from agents.coordination.priority import (
    Claim,
    PriorityStrategy,
    Resolution,
    ResolutionError,
    claim_list,
    resolve,
)
from agents.coordination.voting import (
    CHOICE_CHARS_MAX,
    REASON_CHARS_MAX,
    Voter,
    VoteRecord,
    VotingRule,
    run_vote,
)
from mesh.errors import ConfigError

__all__ = [
    "RESOLVE_TIMEOUT_S_MAX",
    "ROUNDS_MAX",
    "SUBJECT_CHARS_MAX",
    "Conflict",
    "ConflictError",
    "ConflictKind",
    "DecidedBy",
    "Fallback",
    "NegotiationRound",
    "Negotiator",
    "Person",
    "Proposal",
    "ResolutionRecord",
    "ResolverConfig",
    "ResolverStrategy",
    "Turn",
    "resolve_conflict",
    "value_text",
]

ConflictKind = Literal["data", "resource"]
"""Contradictory outputs for one question, or several agents wanting one resource."""
ResolverStrategy = Literal["priority", "vote", "negotiate"]
"""How ``resolve_conflict`` settles a conflict (see the module docstring)."""
Fallback = Literal["vote", "person"]
"""Where a negotiation that ran out of rounds goes."""
DecidedBy = Literal["priority", "vote", "negotiation", "person", "nobody"]
"""Who settled a conflict (``nobody``: it stays unresolved)."""

ROUNDS_MAX = 100
"""Largest ``rounds_max`` of a negotiation."""
SUBJECT_CHARS_MAX = 1024
"""Longest subject of a conflict."""
RESOLVE_TIMEOUT_S_MAX = 3600.0
"""Largest ``timeout_s`` (one negotiation round, or the vote), in seconds."""

_KINDS: tuple[str, ...] = get_args(ConflictKind)
_STRATEGIES: tuple[str, ...] = get_args(ResolverStrategy)
_FALLBACKS: tuple[str, ...] = get_args(Fallback)
_PRIORITIES: tuple[str, ...] = get_args(PriorityStrategy)


class ConflictError(ResolutionError):
    """A conflict, proposal or call of ``resolve_conflict`` that is malformed."""


def value_text(value: Any, whose: str) -> str:
    """``value`` as the JSON text values are compared and voted by.

    ``ConflictError`` naming ``whose`` value when it is not JSON, or longer than
    ``CHOICE_CHARS_MAX`` characters (it becomes a vote's option).
    """
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConflictError(f"{whose} value is not JSON: {exc}") from None
    if len(text) > CHOICE_CHARS_MAX:
        raise ConflictError(f"{whose} value is {len(text)} characters of JSON, more than "
                            f"{CHOICE_CHARS_MAX}")
    return text


@dataclass(frozen=True, slots=True)
class Conflict:
    """Claims that contradict each other about ``subject``."""

    kind: ConflictKind
    subject: str
    claims: list[Claim]
    """One claim per source, each value JSON-able."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConflictError(f"conflict kind {self.kind!r} must be one of {list(_KINDS)}")
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise ConflictError(f"a conflict's subject ({self.subject!r}) must be non-empty "
                                "text")
        if len(self.subject) > SUBJECT_CHARS_MAX:
            raise ConflictError(f"conflict subject {self.subject[:40]!r}... has "
                                f"{len(self.subject)} characters, more than "
                                f"{SUBJECT_CHARS_MAX}")
        if not isinstance(self.claims, list):
            raise ConflictError("a conflict's claims must be a list of Claim")
        try:
            claims = claim_list(self.claims)
        except ResolutionError as exc:
            raise ConflictError(f"conflict over {self.subject!r}: {exc}") from None
        for claim in claims:
            value_text(claim.value, f"{claim.source}'s")

    @property
    def parties(self) -> list[str]:
        """The claims' sources, in the claims' order."""
        return [claim.source for claim in self.claims]

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"kind": self.kind, "subject": self.subject,
                "claims": [claim.to_json() for claim in self.claims]}


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """How ``resolve_conflict`` settles a conflict (see the module docstring)."""

    strategy: ResolverStrategy
    priority: PriorityStrategy = "rank"
    """How claims are ranked with the ``priority`` strategy."""
    ranks: dict[str, int] = field(default_factory=dict)
    """Static ranks by source for ``priority="rank"`` (lower wins)."""
    rounds_max: int = 3
    """Negotiation rounds before falling back. More rounds give the parties more
    chances to converge, at up to ``timeout_s`` each."""
    fallback: Fallback = "vote"
    """Where an unresolved negotiation goes: a vote (then a person), or a person."""
    rule: VotingRule = field(default_factory=VotingRule)
    """The rule of the vote (strategy ``vote``, or the negotiation's fallback)."""
    timeout_s: float = 30.0
    """How long one negotiation round waits for each party's counter-proposal, and
    how long a vote waits for ballots."""

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ConfigError(f"resolver strategy {self.strategy!r} must be one of "
                              f"{list(_STRATEGIES)}")
        if self.priority not in _PRIORITIES:
            raise ConfigError(f"resolver priority {self.priority!r} must be one of "
                              f"{list(_PRIORITIES)}")
        if not isinstance(self.ranks, dict) or not all(
                isinstance(source, str) and type(rank) is int
                for source, rank in self.ranks.items()):
            raise ConfigError(f"resolver ranks ({self.ranks!r}) must map source names to "
                              "integers")
        if type(self.rounds_max) is not int or not 1 <= self.rounds_max <= ROUNDS_MAX:
            raise ConfigError(f"resolver rounds_max ({self.rounds_max!r}) must be an integer "
                              f"from 1 to {ROUNDS_MAX}")
        if self.fallback not in _FALLBACKS:
            raise ConfigError(f"resolver fallback {self.fallback!r} must be one of "
                              f"{list(_FALLBACKS)}")
        if not isinstance(self.rule, VotingRule):
            raise ConfigError(f"resolver rule must be a VotingRule, not "
                              f"{type(self.rule).__name__}")
        if (isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float)
                or not math.isfinite(self.timeout_s)
                or not 0 < self.timeout_s <= RESOLVE_TIMEOUT_S_MAX):
            raise ConfigError(f"resolver timeout_s ({self.timeout_s!r}) must be more than 0 "
                              f"and at most {RESOLVE_TIMEOUT_S_MAX:g} seconds")

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"strategy": self.strategy, "priority": self.priority,
                "ranks": dict(self.ranks), "rounds_max": self.rounds_max,
                "fallback": self.fallback, "rule": self.rule.to_json(),
                "timeout_s": self.timeout_s}


@dataclass(frozen=True, slots=True)
class Proposal:
    """A party's offer in a negotiation: a value, or a concession to the others."""

    source: str
    value: Any
    concede: bool = False
    """The party gives way: it accepts whatever the others settle on."""
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConflictError(f"a proposal's source ({self.source!r}) must be non-empty "
                                "text")
        value_text(self.value, f"{self.source}'s proposed")
        if type(self.concede) is not bool:
            raise ConflictError(f"{self.source}'s concede ({self.concede!r}) must be true or "
                                "false")
        if not isinstance(self.reason, str) or len(self.reason) > REASON_CHARS_MAX:
            raise ConflictError(f"{self.source}'s reason must be text of at most "
                                f"{REASON_CHARS_MAX} characters")

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"source": self.source, "value": self.value, "concede": self.concede,
                "reason": self.reason}


class Negotiator(Protocol):
    """One party of a negotiation."""

    async def counter(self, conflict: Conflict, round: int,
                      proposals: Mapping[str, Proposal]) -> Proposal:
        """This party's proposal in ``round`` (from 1), having seen the others'
        latest ``proposals`` by source (their claims before the first round)."""
        ...


Person = Callable[[Conflict, str], Awaitable[Any]]
"""Asks a person to settle ``conflict``, telling them why: the value chosen, or None."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One party's part in one round."""

    source: str
    value: Any
    concede: bool
    reason: str
    answered: bool = True
    """False when the party did not answer usably (``problem`` says why) and its
    previous proposal stands."""
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"source": self.source, "value": self.value, "concede": self.concede,
                "reason": self.reason, "answered": self.answered, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class NegotiationRound:
    """A round: every party's turn (in the claims' order) and where it left things."""

    number: int
    turns: list[Turn]
    result: str

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"number": self.number, "turns": [t.to_json() for t in self.turns],
                "result": self.result}


@dataclass(frozen=True, slots=True)
class ResolutionRecord:
    """How a conflict was settled, or why it was not: every step, who decided, why."""

    conflict: Conflict
    strategy: ResolverStrategy
    decided_by: DecidedBy
    value: Any
    """The value that stands (None when nobody decided)."""
    why: str
    priority: Resolution | None = None
    rounds: list[NegotiationRound] = field(default_factory=list)
    vote: VoteRecord | None = None
    person_asked: bool = False
    person_answer: Any = None
    steps: list[str] = field(default_factory=list)
    """One line per step, in order."""

    @property
    def resolved(self) -> bool:
        """Whether someone settled the conflict."""
        return self.decided_by != "nobody"

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"conflict": self.conflict.to_json(), "strategy": self.strategy,
                "decided_by": self.decided_by, "value": self.value, "why": self.why,
                "priority": None if self.priority is None else self.priority.to_json(),
                "rounds": [r.to_json() for r in self.rounds],
                "vote": None if self.vote is None else self.vote.to_json(),
                "person_asked": self.person_asked, "person_answer": self.person_answer,
                "steps": list(self.steps)}


async def resolve_conflict(conflict: Conflict, config: ResolverConfig, *,
                           negotiators: Mapping[str, Negotiator] | None = None,
                           voters: Mapping[str, Voter] | None = None,
                           person: Person | None = None) -> ResolutionRecord:
    """Settle ``conflict`` by ``config.strategy`` and record every step (see the module
    docstring).

    ``ConflictError`` when the strategy lacks what it needs: voters for ``vote``,
    a negotiator for every party (and none for anyone else) for ``negotiate``.
    """
    if not isinstance(conflict, Conflict):
        raise ConflictError(f"expected a Conflict, not {type(conflict).__name__}")
    if not isinstance(config, ResolverConfig):
        raise ConflictError(f"expected a ResolverConfig, not {type(config).__name__}")
    if person is not None and not callable(person):
        raise ConflictError("person must be a coroutine function or None")
    run = _Run(conflict, config, voters, person)
    if config.strategy == "priority":
        resolution = resolve(conflict.claims, config.priority, ranks=config.ranks)
        run.steps.append(f"priority by {config.priority}: {resolution.reason}")
        return run.record("priority", resolution.winner.value, resolution.reason,
                          priority=resolution)
    if config.strategy == "vote":
        if not voters:
            raise ConflictError("the vote strategy needs voters")
        return await run.vote([(c.source, c.value) for c in conflict.claims], "")
    return await run.negotiate(_negotiators(conflict, negotiators))


def _negotiators(conflict: Conflict,
                 negotiators: Mapping[str, Negotiator] | None) -> dict[str, Negotiator]:
    if not isinstance(negotiators, Mapping) or not negotiators:
        raise ConflictError("the negotiate strategy needs a negotiator for every party")
    parties = set(conflict.parties)
    missing = sorted(parties - set(negotiators))
    extra = sorted(str(name) for name in set(negotiators) - parties)
    if missing:
        raise ConflictError(f"no negotiator for {', '.join(missing)}")
    if extra:
        raise ConflictError(f"negotiators without a claim in the conflict: {', '.join(extra)}")
    for name in conflict.parties:
        if not callable(getattr(negotiators[name], "counter", None)):
            raise ConflictError(f"negotiator {name!r} has no counter method")
    return {name: negotiators[name] for name in conflict.parties}


class _Run:
    """One resolution in progress: what it was given and the steps so far."""

    def __init__(self, conflict: Conflict, config: ResolverConfig,
                 voters: Mapping[str, Voter] | None, person: Person | None) -> None:
        self.conflict = conflict
        self.config = config
        self.voters = voters
        self.person = person
        self.steps: list[str] = []
        self.rounds: list[NegotiationRound] = []

    def record(self, decided_by: DecidedBy, value: Any, why: str,
               **parts: Any) -> ResolutionRecord:
        self.steps.append(f"decided by {decided_by}: {why}" if decided_by != "nobody"
                          else f"unresolved: {why}")
        return ResolutionRecord(conflict=self.conflict, strategy=self.config.strategy,
                                decided_by=decided_by, value=value, why=why,
                                rounds=self.rounds, steps=self.steps, **parts)

    # -- vote, then a person --------------------------------------------------------

    async def vote(self, offers: Sequence[tuple[str, Any]], before: str) -> ResolutionRecord:
        """Put the distinct values of ``offers`` (source, value) to the voters."""
        assert self.voters
        by_text: dict[str, Any] = {}
        for source, value in offers:
            by_text.setdefault(value_text(value, f"{source}'s"), value)
        question = (f"{self.conflict.kind} conflict over {self.conflict.subject!r}: "
                    "which value should stand?")
        self.steps.append(f"vote among {len(self.voters)} voters on {len(by_text)} values")
        vote = await run_vote(question, self.voters, list(by_text), self.config.rule,
                              timeout_s=self.config.timeout_s)
        self.steps.append(f"vote: {vote.outcome.reason}")
        if vote.decided_by == "vote":
            assert vote.choice is not None
            return self.record("vote", by_text[vote.choice],
                               f"{before}the vote chose {vote.choice}: {vote.outcome.reason}",
                               vote=vote)
        return await self.ask_person(f"{before}the vote did not decide: {vote.outcome.reason}",
                                     vote=vote)

    async def ask_person(self, why_asked: str, **parts: Any) -> ResolutionRecord:
        if self.person is None:
            return self.record("nobody", None, f"{why_asked}; no person was given to decide",
                               **parts)
        self.steps.append(f"asked a person: {why_asked}")
        answer = await self.person(self.conflict, why_asked)
        if answer is None:
            return self.record("nobody", None, f"{why_asked}; the person made no choice",
                               person_asked=True, **parts)
        try:
            text = value_text(answer, "the person's")
        except ConflictError as exc:
            return self.record("nobody", None, f"{why_asked}; {exc}", person_asked=True,
                               **parts)
        return self.record("person", answer, f"{why_asked}; a person chose {text}",
                           person_asked=True, person_answer=answer, **parts)

    # -- negotiation ----------------------------------------------------------------

    async def negotiate(self, negotiators: Mapping[str, Negotiator]) -> ResolutionRecord:
        latest = {c.source: Proposal(c.source, c.value, reason="its claim")
                  for c in self.conflict.claims}
        agreed = _agreement(latest)
        if agreed is not None:
            self.steps.append("the claims already agree")
            return self.record("negotiation", agreed[0], f"before any round, {agreed[1]}")
        for number in range(1, self.config.rounds_max + 1):
            turns = await self._round(number, negotiators, latest)
            for turn in turns:
                if turn.answered:
                    latest[turn.source] = Proposal(turn.source, turn.value, turn.concede,
                                                   turn.reason)
            agreed = _agreement(latest)
            result = agreed[1] if agreed is not None else _disagreement(latest)
            self.rounds.append(NegotiationRound(number, turns, result))
            self.steps.append(f"round {number}: " + "; ".join(_describe(t) for t in turns)
                              + f" -> {result}")
            if agreed is not None:
                return self.record("negotiation", agreed[0], f"in round {number}, {agreed[1]}")
        stalled = (f"no agreement after {_count(self.config.rounds_max, 'round')} "
                   f"({_disagreement(latest)})")
        if self.config.fallback == "vote" and self.voters:
            return await self.vote([(s, p.value) for s, p in latest.items()], stalled + "; ")
        if self.config.fallback == "vote":
            stalled += "; no voters were given for the fallback vote"
        return await self.ask_person(stalled)

    async def _round(self, number: int, negotiators: Mapping[str, Negotiator],
                     latest: Mapping[str, Proposal]) -> list[Turn]:
        """Every party's turn at once, each bounded by the timeout."""
        timeout_s = self.config.timeout_s
        turns: dict[str, Turn] = {}

        def kept(source: str, problem: str) -> Turn:
            previous = latest[source]
            return Turn(source, previous.value, previous.concede, previous.reason,
                        answered=False, problem=f"{problem}; its previous proposal stands")

        async def turn(source: str, seen: Mapping[str, Proposal]) -> None:
            answer: object = None
            with anyio.move_on_after(timeout_s) as scope:
                try:
                    answer = await negotiators[source].counter(self.conflict, number, seen)
                except Exception as exc:  # a failing party loses its turn, not the negotiation
                    turns[source] = kept(source, f"failed: {type(exc).__name__}: {exc}")
                    return
            if scope.cancelled_caught:
                turns[source] = kept(source, f"no counter-proposal within {timeout_s:g} s")
            elif not isinstance(answer, Proposal):
                turns[source] = kept(source, f"returned a {type(answer).__name__}, not a "
                                             "Proposal")
            elif answer.source != source:
                turns[source] = kept(source, f"the proposal names {answer.source!r}, not "
                                             f"{source!r}")
            else:
                turns[source] = Turn(source, answer.value, answer.concede, answer.reason)

        async with anyio.create_task_group() as tg:
            for source in latest:
                seen = {other: p for other, p in latest.items() if other != source}
                tg.start_soon(turn, source, seen)
        return [turns[source] for source in latest]


def _agreement(latest: Mapping[str, Proposal]) -> tuple[Any, str] | None:
    """(the agreed value, how) when the latest proposals agree, None otherwise."""
    texts = {source: value_text(p.value, f"{source}'s") for source, p in latest.items()}
    if len(set(texts.values())) == 1:
        text = next(iter(texts.values()))
        return next(iter(latest.values())).value, f"every party proposes {text}"
    holdouts = [source for source, p in latest.items() if not p.concede]
    if len(holdouts) == 1:
        winner = holdouts[0]
        return latest[winner].value, (f"every other party conceded to {winner}, whose "
                                      f"proposal {texts[winner]} stands")
    return None


def _disagreement(latest: Mapping[str, Proposal]) -> str:
    holdouts = [source for source, p in latest.items() if not p.concede]
    if not holdouts:
        return "every party conceded, so no proposal stands"
    return f"{_count(len(holdouts), 'party', 'parties')} still hold out: " + ", ".join(
        f"{source} for {value_text(latest[source].value, source)}" for source in holdouts)


def _describe(turn: Turn) -> str:
    text = value_text(turn.value, f"{turn.source}'s")
    if not turn.answered:
        return f"{turn.source} {turn.problem} ({text})"
    verb = "concedes, last proposing" if turn.concede else "proposes"
    return f"{turn.source} {verb} {text}" + (f" ({turn.reason})" if turn.reason else "")


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"
