"""Replicated key-value state machine: the KV store Raft replicates.

How this works: clients send ``Request`` objects (a command, their client id and
sequence number) to the Raft leader, which stamps them with its clock
(``now_ms``), encodes them (``encode_request``, or several key writes that arrived
together as one batch, ``encode_entry``) and proposes the bytes. Each replica
applies committed entries with ``KVStore.apply_entry(index, bytes)``, a
deterministic function of the state and the entry, and the leader returns each
request's ``Response`` to its client. The store holds keys with per-key versions
(``Put``, ``Delete``, ``CompareAndSet``), leases with TTLs that take their keys
with them (``LeaseGrant``, ``LeaseKeepAlive``, ``LeaseRevoke``), and locks that
hand out fencing tokens (``LockAcquire``, ``LockRelease``); ``Tick`` just advances
time. Retried requests
are applied once (``sessions``). ``snapshot``/``restore`` give canonical bytes for
Raft log compaction.

Modules, one concept each: ``commands`` (what can be asked and its bytes),
``responses`` (what is answered), ``views`` (what reads return, and what versions
mean), ``store`` (applying), ``sessions`` (dedup), ``leases`` (expiry order),
``snapshot`` (state bytes), ``settings`` (limits), ``wire`` (msgpack helpers),
``errors``.
"""

from consensus.kvstore.commands import (
    Command,
    CompareAndSet,
    CompareAndSetWithWrites,
    Delete,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Put,
    Request,
    Tick,
    decode_command,
    decode_entry,
    decode_request,
    encode_command,
    encode_entry,
    encode_request,
    may_share_entry,
)
from consensus.kvstore.errors import CommandError, KVStoreError, SnapshotError
from consensus.kvstore.responses import ErrorCode, Response, decode_response, encode_response
from consensus.kvstore.settings import KVSettings
from consensus.kvstore.store import RANGE_LIMIT_DEFAULT, KVStore
from consensus.kvstore.views import Item, Lease, Lock

__all__ = [
    "RANGE_LIMIT_DEFAULT",
    "Command",
    "CommandError",
    "CompareAndSet",
    "CompareAndSetWithWrites",
    "Delete",
    "ErrorCode",
    "Item",
    "KVSettings",
    "KVStore",
    "KVStoreError",
    "Lease",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseRevoke",
    "Lock",
    "LockAcquire",
    "LockRelease",
    "Put",
    "Request",
    "Response",
    "SnapshotError",
    "Tick",
    "decode_command",
    "decode_entry",
    "decode_request",
    "decode_response",
    "encode_command",
    "encode_entry",
    "encode_request",
    "encode_response",
    "may_share_entry",
]
