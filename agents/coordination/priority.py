"""Priority-based conflict resolution: which of several contradictory claims stands.

How this works
--------------
Several agents *claim* a value for the same thing (an answer, a resource). Each
``Claim`` carries the fields a strategy may rank it by, and ``resolve(claims,
strategy)`` orders the claims and names the winner with a sentence saying why:

``rank``
    static priority: the lower rank wins (rank 0 before rank 1). The rank is
    looked up in the ``ranks`` table first (what the operator configured), then
    in the claim itself (what the agent says of itself); when both give one and
    they differ the table stands, and the resolution's ``notes`` say so.
``confidence``
    dynamic: the highest confidence (0 to 1) wins.
``freshness``
    dynamic: the newest ``updated_at`` wins, then the highest ``version``
    (two copies written at the same instant are told apart by their version).

Ties are broken by source name (the alphabetically first wins), so the same
claims always give the same winner, on every node. A claim without the field
the strategy needs is ranked after every claim that has it (then by source
name) and noted; with ``freshness``, the version still orders claims that lack
an update time.

Nothing here does I/O or reads a clock: resolving is a pure function of the
claims, so any node can check a recorded resolution by resolving again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from mesh.errors import MeshError

__all__ = [
    "CLAIMS_MAX",
    "SOURCE_CHARS_MAX",
    "Claim",
    "PriorityStrategy",
    "Resolution",
    "ResolutionError",
    "claim_list",
    "resolve",
]

PriorityStrategy = Literal["rank", "confidence", "freshness"]
"""How ``resolve`` orders claims (see the module docstring)."""

CLAIMS_MAX = 1024
"""Most claims resolved at once."""
SOURCE_CHARS_MAX = 128
"""Longest source name (an agent's or a task's)."""

_STRATEGIES: tuple[str, ...] = get_args(PriorityStrategy)
_NEEDS = {"rank": "rank", "confidence": "confidence", "freshness": "update time"}
_ARTICLE = {"rank": "a", "confidence": "a", "freshness": "an"}


class ResolutionError(MeshError):
    """Claims (or a conflict) that cannot be resolved as given: the message says why."""


@dataclass(frozen=True, slots=True)
class Claim:
    """``source`` says the value is ``value``; the other fields rank the claim."""

    source: str
    value: Any
    rank: int | None = None
    """Static priority the source gives itself: lower wins."""
    confidence: float | None = None
    """How sure the source is, 0 to 1."""
    updated_at: float | None = None
    """When the value was last updated (seconds on a clock the sources share)."""
    version: int | None = None
    """The value's version (higher is newer); tells apart equal update times."""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ResolutionError(f"a claim's source ({self.source!r}) must be non-empty text")
        if len(self.source) > SOURCE_CHARS_MAX:
            raise ResolutionError(f"claim source {self.source[:40]!r}... has "
                                  f"{len(self.source)} characters, more than "
                                  f"{SOURCE_CHARS_MAX}")
        if self.rank is not None and type(self.rank) is not int:
            raise ResolutionError(f"{self.source}'s rank ({self.rank!r}) must be an integer")
        if self.confidence is not None and (
                not _is_number(self.confidence) or not 0 <= self.confidence <= 1):
            raise ResolutionError(f"{self.source}'s confidence ({self.confidence!r}) must be "
                                  "a number from 0 to 1")
        if self.updated_at is not None and (
                not _is_number(self.updated_at) or not math.isfinite(self.updated_at)):
            raise ResolutionError(f"{self.source}'s updated_at ({self.updated_at!r}) must be "
                                  "a finite number")
        if self.version is not None and (type(self.version) is not int or self.version < 0):
            raise ResolutionError(f"{self.source}'s version ({self.version!r}) must be an "
                                  "integer >= 0")

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``value`` as given: JSON-able if the caller's values are)."""
        return {"source": self.source, "value": self.value, "rank": self.rank,
                "confidence": self.confidence, "updated_at": self.updated_at,
                "version": self.version}


@dataclass(frozen=True, slots=True)
class Resolution:
    """The winning claim, the full order, and why."""

    winner: Claim
    strategy: PriorityStrategy
    ranking: list[Claim]
    """Every claim, best first."""
    reason: str
    losers: list[Claim]
    """Every claim but the winner, best first."""
    notes: list[str] = field(default_factory=list)
    """Claims missing the strategy's field, ranks overridden by the table."""

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {"winner": self.winner.to_json(), "strategy": self.strategy,
                "ranking": [c.to_json() for c in self.ranking], "reason": self.reason,
                "losers": [c.to_json() for c in self.losers], "notes": list(self.notes)}


def resolve(claims: Iterable[Claim], strategy: PriorityStrategy, *,
            ranks: Mapping[str, int] | None = None) -> Resolution:
    """Order ``claims`` by ``strategy`` and name the winner (see the module docstring).

    ``ranks`` maps sources to static ranks for the ``rank`` strategy. Raises
    ``ResolutionError`` for no claims, too many, two claims of one source, or a
    malformed argument.
    """
    listed = claim_list(claims)
    if strategy not in _STRATEGIES:
        raise ResolutionError(f"priority strategy {strategy!r} must be one of "
                              f"{list(_STRATEGIES)}")
    table = _rank_table(ranks)
    notes: list[str] = []
    rank_of: dict[str, int | None] = {}
    for claim in sorted(listed, key=lambda c: c.source):
        ranked = table.get(claim.source, claim.rank)
        if claim.source in table and claim.rank is not None and claim.rank != ranked:
            notes.append(f"{claim.source} claims rank {claim.rank} but the ranks table gives "
                         f"{ranked}: the table stands")
        rank_of[claim.source] = ranked

    def key(claim: Claim) -> tuple[Any, ...]:
        if strategy == "rank":
            rank = rank_of[claim.source]
            return (rank is None, rank or 0, claim.source)
        if strategy == "confidence":
            return (claim.confidence is None, -(claim.confidence or 0.0), claim.source)
        return (claim.updated_at is None, -(claim.updated_at or 0.0),
                claim.version is None, -(claim.version or 0), claim.source)

    ranking = sorted(listed, key=key)
    lacking = sorted(c.source for c in ranking if _field(c, strategy, rank_of) is None)
    if lacking and len(lacking) == len(ranking):
        notes.append(f"no claim has {_ARTICLE[strategy]} {_NEEDS[strategy]}")
    else:
        notes += [f"{source} has no {_NEEDS[strategy]}: ranked last" for source in lacking]
    winner = ranking[0]
    reason = (f"{winner.source}'s is the only claim" if len(ranking) == 1
              else _reason(winner, ranking[1], strategy, rank_of))
    return Resolution(winner=winner, strategy=strategy, ranking=ranking, reason=reason,
                      losers=ranking[1:], notes=notes)


def claim_list(claims: Iterable[Claim]) -> list[Claim]:
    """``claims`` as a list, checked: at least one, at most ``CLAIMS_MAX``, one per source."""
    if isinstance(claims, str | bytes) or not isinstance(claims, Iterable):
        raise ResolutionError("claims must be an iterable of Claim")
    listed: list[Claim] = []
    seen: set[str] = set()
    for index, claim in enumerate(claims):
        if index >= CLAIMS_MAX:
            raise ResolutionError(f"more than {CLAIMS_MAX} claims")
        if not isinstance(claim, Claim):
            raise ResolutionError(f"claim {index} is a {type(claim).__name__}, not a Claim")
        if claim.source in seen:
            raise ResolutionError(f"{claim.source} makes more than one claim")
        seen.add(claim.source)
        listed.append(claim)
    if not listed:
        raise ResolutionError("there is no claim to resolve")
    return listed


def _rank_table(ranks: Mapping[str, int] | None) -> dict[str, int]:
    if ranks is None:
        return {}
    if not isinstance(ranks, Mapping):
        raise ResolutionError(f"ranks must be a mapping of source to rank, not "
                              f"{type(ranks).__name__}")
    for source, rank in ranks.items():
        if not isinstance(source, str) or type(rank) is not int:
            raise ResolutionError(f"ranks entry {source!r}: {rank!r} must map a source name "
                                  "to an integer")
    return dict(ranks)


def _field(claim: Claim, strategy: str, rank_of: Mapping[str, int | None]) -> Any:
    if strategy == "rank":
        return rank_of[claim.source]
    return claim.confidence if strategy == "confidence" else claim.updated_at


def _reason(winner: Claim, runner: Claim, strategy: str,
            rank_of: Mapping[str, int | None]) -> str:
    """Why ``winner`` comes before ``runner`` (the best of the rest)."""
    w, r = winner.source, runner.source
    tie_break = f"{w}'s value wins on source name (the tie-break)"
    if strategy == "freshness":
        return _freshness_reason(winner, runner)
    mine, theirs = _field(winner, strategy, rank_of), _field(runner, strategy, rank_of)
    name = _NEEDS[strategy]
    if mine is None:
        return f"no claim has a {name}; {tie_break}"
    if theirs is None:
        return f"{w}'s value has a {name} ({_show(mine)}) and {r}'s has none"
    if mine == theirs:
        return f"{w} and {r} tie at {name} {_show(mine)}; {tie_break}"
    if strategy == "rank":
        return f"{w}'s value has the best rank ({mine}, against {r}'s {theirs}; lower wins)"
    return (f"{w}'s value has the highest confidence ({_show(mine)}, against {r}'s "
            f"{_show(theirs)})")


def _freshness_reason(winner: Claim, runner: Claim) -> str:
    w, r = winner.source, runner.source
    tie_break = f"{w}'s value wins on source name (the tie-break)"
    if winner.updated_at is None:
        head = "no claim has an update time"
    elif runner.updated_at is None:
        return f"{w}'s value has an update time and {r}'s has none"
    elif winner.updated_at != runner.updated_at:
        return (f"{w}'s value is the newest (updated "
                f"{_show(winner.updated_at - runner.updated_at)} s after {r}'s)")
    else:
        head = f"{w}'s and {r}'s values were updated at the same time"
    if winner.version is None:
        return f"{head} and neither has a version; {tie_break}"
    if runner.version is None:
        return f"{head}; {w}'s has a version ({winner.version}) and {r}'s has none"
    if winner.version != runner.version:
        return (f"{head}; {w}'s has the higher version ({winner.version}, against "
                f"{r}'s {runner.version})")
    return f"{head} and have the same version ({winner.version}); {tie_break}"


def _show(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
