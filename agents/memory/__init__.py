"""Agent memory: recent conversation turns, past episodes and facts recalled by similarity.

How this works
--------------
``short_term`` keeps the recent messages of each conversation in the process
(bounded by turns, characters and conversations). ``episodic`` and ``semantic``
keep their records in the Raft KV store, so they survive any node's restart and
every node sees the same: ``EpisodicMemory`` the past tasks of an agent or a
team, queried by agent, capability, outcome, tag, time and text;
``SemanticMemory`` facts, recalled by the cosine similarity of their embeddings
(``HashingEmbedder`` built in, ``MiniLMEmbedder`` with the ``embeddings``
extra). Both work on one *scope* each: a team's shared memory
(``"team/research"``) or one agent's private memory (``"private/agent-a"``),
guarded by an ``access`` policy such as ``glob_access`` (``scopes``).
"""

from agents.memory.episodic import Episode, EpisodicMemory, Outcome, new_episode_id
from agents.memory.scopes import (
    AccessCheck,
    Action,
    AgentMemoryError,
    EmbedderMismatch,
    KVLike,
    MemoryAccessError,
    MemoryInputError,
    MemoryStoreError,
    glob_access,
    validate_scope,
)
from agents.memory.semantic import (
    Embedder,
    Fact,
    HashingEmbedder,
    MiniLMEmbedder,
    SemanticMemory,
)
from agents.memory.short_term import Message, ShortTermMemory

__all__ = [
    "AccessCheck",
    "Action",
    "AgentMemoryError",
    "Embedder",
    "EmbedderMismatch",
    "Episode",
    "EpisodicMemory",
    "Fact",
    "HashingEmbedder",
    "KVLike",
    "MemoryAccessError",
    "MemoryInputError",
    "MemoryStoreError",
    "Message",
    "MiniLMEmbedder",
    "Outcome",
    "SemanticMemory",
    "ShortTermMemory",
    "glob_access",
    "new_episode_id",
    "validate_scope",
]
