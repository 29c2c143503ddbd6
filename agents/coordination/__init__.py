"""Coordination among agents: voting, priorities, negotiated conflicts, deadlock-free waits.

``voting`` tallies ballots under a rule and runs a bounded vote that escalates
to a person when it decides nothing; ``priority`` picks among contradictory
claims by rank, confidence or freshness; ``negotiation`` settles a conflict by
priority, vote or bounded rounds of proposals and records who decided what and
why; ``waits`` keeps a wait-for graph, refuses a wait that would close a cycle
and bounds every wait by a timeout.
"""

from agents.coordination.negotiation import (
    Conflict,
    ConflictError,
    NegotiationRound,
    Negotiator,
    Proposal,
    ResolutionRecord,
    ResolverConfig,
    Turn,
    resolve_conflict,
)
from agents.coordination.priority import Claim, Resolution, ResolutionError, resolve
from agents.coordination.raft_waits import MeshWaits
from agents.coordination.voting import (
    Ballot,
    InvalidBallot,
    VoteError,
    VoteOutcome,
    VoteRecord,
    VotingRule,
    run_vote,
    tally,
)
from agents.coordination.waits import (
    DeadlockError,
    WaitError,
    WaitForGraph,
    WaitGraphFull,
    WaitRegistry,
    WaitTimeout,
    bounded_wait,
)

__all__ = [
    "Ballot",
    "Claim",
    "Conflict",
    "ConflictError",
    "DeadlockError",
    "InvalidBallot",
    "MeshWaits",
    "NegotiationRound",
    "Negotiator",
    "Proposal",
    "Resolution",
    "ResolutionError",
    "ResolutionRecord",
    "ResolverConfig",
    "Turn",
    "VoteError",
    "VoteOutcome",
    "VoteRecord",
    "VotingRule",
    "WaitError",
    "WaitForGraph",
    "WaitGraphFull",
    "WaitRegistry",
    "WaitTimeout",
    "bounded_wait",
    "resolve",
    "resolve_conflict",
    "run_vote",
    "tally",
]
