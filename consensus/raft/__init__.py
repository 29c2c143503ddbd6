"""Raft: the critical, linearizable tier of agentmesh's shared state.

How this works: ``RaftNode`` (in ``node``) is a pure protocol core in the style of
etcd-io/raft. Peers' messages go in through ``step``, time through ``tick(now)``,
local requests through ``propose``, ``read_index`` and friends; everything the
driver must do comes out as one ``Ready`` batch (persist, then send, then apply).
``types`` holds the value types, ``storage`` the storage contract the driver
implements (``MemoryStorage`` in memory), ``messages`` the wire payloads,
``settings`` every knob, ``ready`` the output batch. ``log`` (storage plus what is
not persisted yet), ``progress``, ``quorum``, ``read_only``, ``snapshot_transfer``
and ``outbox`` are the core's inner parts.
"""

from consensus.raft.errors import (
    CompactedError,
    RaftError,
    SnapshotOutOfDateError,
    StorageError,
    UnavailableError,
)
from consensus.raft.messages import MESSAGE_KINDS
from consensus.raft.node import COUNTER_NAMES, RaftNode
from consensus.raft.ready import Ready
from consensus.raft.settings import RaftSettings
from consensus.raft.storage import MemoryStorage, Storage, WritableStorage
from consensus.raft.types import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

__all__ = [
    "COUNTER_NAMES",
    "MESSAGE_KINDS",
    "CompactedError",
    "ConfChange",
    "ConfChangeKind",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "MemoryStorage",
    "RaftError",
    "RaftNode",
    "RaftSettings",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotOutOfDateError",
    "SoftState",
    "Storage",
    "StorageError",
    "UnavailableError",
    "WritableStorage",
]
