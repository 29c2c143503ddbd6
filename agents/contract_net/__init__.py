"""Contract-net task allocation: pure manager and contractor cores and the task ledger.

How this works: a manager calls for proposals (``messages``), ranks the bids
(``scoring``) and asks its driver to record the award in the Raft task ledger
(``ledger``: pure compare-and-set transitions, so one award per epoch survives any
race); the contractor bids, runs what it wins and reports the result, which the
ledger accepts only at the current epoch. ``manager`` and ``contractor`` are the
cores, ``events`` what they ask of their driver, ``settings`` their limits.
No I/O, clock or global randomness anywhere here.
"""

from agents.contract_net.contractor import (
    Contractor,
    Estimate,
    Estimator,
    RoomCheck,
    fixed_estimator,
)
from agents.contract_net.events import (
    AwardDecision,
    FailureReported,
    NoBids,
    ResultReported,
    StartTask,
)
from agents.contract_net.ledger import (
    LedgerError,
    Refusal,
    RefusalReason,
    TaskRecord,
    TaskState,
    Transition,
    decode_record,
    encode_record,
    task_key,
)
from agents.contract_net.manager import AuctionPhase, Manager
from agents.contract_net.messages import MESSAGE_KINDS
from agents.contract_net.scoring import (
    Bid,
    ScoreFunction,
    ScoringWeights,
    rank_bids,
    weighted_score,
)
from agents.contract_net.settings import ContractorSettings, ManagerSettings

__all__ = [
    "MESSAGE_KINDS",
    "AuctionPhase",
    "AwardDecision",
    "Bid",
    "Contractor",
    "ContractorSettings",
    "Estimate",
    "Estimator",
    "FailureReported",
    "LedgerError",
    "Manager",
    "ManagerSettings",
    "NoBids",
    "Refusal",
    "RefusalReason",
    "ResultReported",
    "RoomCheck",
    "ScoreFunction",
    "ScoringWeights",
    "StartTask",
    "TaskRecord",
    "TaskState",
    "Transition",
    "decode_record",
    "encode_record",
    "fixed_estimator",
    "rank_bids",
    "task_key",
    "weighted_score",
]
