"""KV store settings: every limit of the replicated state machine, with its default.

How this works: one frozen dataclass, validated on construction (a bad value raises
``ValueError`` naming the field and the value). The settings are part of the state
machine's definition: a write one replica accepts and another refuses would make
them diverge, so every replica of a cluster must run with equal settings. A
snapshot carries the settings it was taken with and ``KVStore.restore`` keeps them
unless told otherwise. A write beyond a limit is answered with a ``too_large``
response (the request is still applied, as a refusal), never with an exception.

Limits in units their names say: ``_bytes_max`` UTF-8 or raw bytes, ``_ms_max``
milliseconds, ``_max`` a count. Worst-case memory is roughly
``keys_max * (key_bytes_max + value_bytes_max)`` for the data plus
``sessions_max * session_window`` stored responses (each well under 1 KiB).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INT_MAX", "KVSettings"]

INT_MAX = 2**63 - 1
"""Largest integer any command, response or snapshot field may hold (int64), so every
field fits a signed 64-bit integer in other languages' msgpack decoders too."""


@dataclass(frozen=True, slots=True)
class KVSettings:
    """Limits of one KV store; must be equal on every replica (see the module doc)."""

    keys_max: int = 100_000
    """Keys held at once. A put or compare-and-set that would create one more is
    refused with ``too_large``; overwriting an existing key is always allowed."""
    key_bytes_max: int = 512
    """UTF-8 length of a key, and of every other identifier the store keeps: lock
    names, lock owners and client ids. Longer ones are refused with ``too_large``."""
    value_bytes_max: int = 256 * 1024
    """Length of one value. Each write travels in a Raft entry inside a signed
    envelope, so keep it well below ``envelope_size_bytes_max`` (1 MiB by default);
    larger values also make snapshots and follower catch-up slower."""
    sessions_max: int = 4096
    """Client sessions (the dedup state of distinct client ids). When a new client
    would exceed it, the session least recently used (by apply index) is dropped;
    that client's next request is refused with ``session_expired`` rather than risk
    applying a retry twice. Size it above the number of concurrently active clients."""
    session_window: int = 32
    """Responses kept per client: those of its highest applied sequence numbers. A
    retry of one of them gets the stored response; a request older than all of them
    is refused as ``stale_request``. Larger tolerates more requests in flight per
    client (pipelining, out-of-order retries) at ``sessions_max`` times the memory."""
    leases_max: int = 10_000
    """Leases held at once, lock leases included. A grant or lock acquire beyond it
    is refused with ``too_large``."""
    locks_max: int = 10_000
    """Locks held at once. An acquire of a free lock beyond it gets ``too_large``."""
    lease_ttl_ms_max: int = 24 * 3600 * 1000
    """Longest TTL a lease or lock may ask for (one day). A forgotten lease holds its
    keys and locks until it expires, so this bounds how long a crashed client's
    state can linger."""

    def __post_init__(self) -> None:
        _check_int("keys_max", self.keys_max, 1, 100_000_000)
        _check_int("key_bytes_max", self.key_bytes_max, 1, 1 << 20)
        _check_int("value_bytes_max", self.value_bytes_max, 0, 1 << 30)
        _check_int("sessions_max", self.sessions_max, 1, 10_000_000)
        _check_int("session_window", self.session_window, 1, 100_000)
        _check_int("leases_max", self.leases_max, 1, 100_000_000)
        _check_int("locks_max", self.locks_max, 1, 100_000_000)
        _check_int("lease_ttl_ms_max", self.lease_ttl_ms_max, 1, INT_MAX // 2)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} ({value!r}) must be an integer from {low} to {high}")
