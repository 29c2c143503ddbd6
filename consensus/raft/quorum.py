"""Majority arithmetic: the commit index a quorum holds, and vote tallies.

How this works: with ``n`` voters a quorum is any ``n // 2 + 1`` of them. The
highest index held by a quorum is the ``(n // 2 + 1)``-th largest match index
(voters not heard from count as 0). A vote is won once a quorum granted it and
lost once so many refused that a quorum can no longer grant it. Learners never
appear here: callers pass the voter set only.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = ["VoteResult", "committed_index", "has_quorum", "quorum_size", "tally"]


class VoteResult(enum.Enum):
    """Where an election (or pre-vote) stands."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voter_count: int) -> int:
    """How many voters make a majority of ``voter_count``."""
    return voter_count // 2 + 1


def committed_index(voters: Collection[bytes], match: Mapping[bytes, int]) -> int:
    """The largest index that a quorum of ``voters`` holds (0 with no voters)."""
    if not voters:
        return 0
    indices = sorted((match.get(voter, 0) for voter in voters), reverse=True)
    return indices[quorum_size(len(indices)) - 1]


def has_quorum(voters: Collection[bytes], members: Collection[bytes]) -> bool:
    """Whether ``members`` include a majority of ``voters``."""
    return bool(voters) and sum(1 for v in voters if v in members) >= quorum_size(len(voters))


def tally(voters: Collection[bytes], votes: Mapping[bytes, bool]) -> VoteResult:
    """The outcome of ``votes`` (voter -> granted) among ``voters``; others ignored."""
    need = quorum_size(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    refused = sum(1 for v in voters if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if refused > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING
