"""Exceptions of the replicated KV store.

How this works: the store itself never raises for anything a client or a peer
sent. Undecodable request bytes become an ``invalid_request`` response from
``KVStore.apply`` (every replica must apply every committed entry, garbage
included, and all must reach the same result). Exceptions are only for callers
that decode bytes themselves (``decode_command``, ``decode_request``,
``decode_response``) or restore a snapshot. They derive from ``ValueError``
because ``consensus`` sits below ``mesh`` and cannot use ``mesh.errors.MeshError``;
a driver in ``mesh`` wraps them where it needs the common root.
"""

from __future__ import annotations

__all__ = ["CommandError", "KVStoreError", "SnapshotError"]


class KVStoreError(ValueError):
    """Root of the KV store's exceptions."""


class CommandError(KVStoreError):
    """Bytes or fields that do not make a well-formed command, request or response."""


class SnapshotError(KVStoreError):
    """Snapshot bytes that are not a well-formed, self-consistent KV store state."""
