"""Shared state for agentmesh: pure protocol cores and their message types.

``consensus.core`` defines how every protocol core is driven (``step``, ``tick``,
an outbox); Raft and gossip arrive in their own subpackages. Nothing here does
I/O, reads a clock or draws global randomness.
"""

__all__: list[str] = []
