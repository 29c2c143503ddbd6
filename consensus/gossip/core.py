"""The gossip core: CRDT state spread by rumours and push-pull anti-entropy, with no I/O.

How this works
--------------
State is a set of *records*: last-writer-wins map entries (``lww``) and the tags of
named observed-remove sets (``orset``). Every local write becomes one record
stamped with a hybrid-logical-clock timestamp and the next version number of this
node's *origin* (node id + incarnation). Records merge by their CRDT rule, so the
order they arrive in does not matter; versions only steer who sends what.

Dissemination has two paths:

- Rumours. A record just written or just learned is piggybacked on the next
  digests this node sends, ``rumor_retransmit_multiplier * ceil(log2(n + 1))``
  times in all (``rumors``), so it spreads in about log(n) rounds.
- Anti-entropy. Every ``round_interval_s`` the core sends its digest (per origin,
  the highest version it has fully received, see ``versions``) to ``fanout``
  random live members. The responder replies with the records the initiator
  lacks, lowest versions first and at most ``deltas_per_message_max``, together
  with how far the initiator may advance each origin (so overwritten versions,
  which nobody stores any more, leave no permanent gap) and a request listing the
  origins where the responder lags; the initiator answers that request with its
  deltas. When both are in sync the exchange is the one digest message
  (``messages`` describes the three messages).

Tombstones (deleted keys and removed OR-set tags) are collected once the latest
digest of every live member covers them and they are older than
``tombstone_grace_s`` (``tombstones``). Known consequence: a node that was not in
``update_members`` when a tombstone was collected (cut off long enough to be
declared dead) and still holds the value that tombstone deleted brings it back when
it returns: it keeps showing the deleted key or element, and because the others
have already counted that old write as received, they never ask for it, so the
states differ for that key until it is written again. A restarted node comes back
empty and cannot do this; the grace period limits the window to partitions longer
than itself. A lone node (no members) never collects.

Limits: keys, values, record count, message sizes, rumour and change queues are
all bounded by ``GossipSettings``. A local write beyond a limit raises
``ValueError`` (``TypeError`` for a value gossip cannot carry); a remote record
beyond one is dropped and counted in ``counters``, as is anything odd from a peer
(versions of our own origin we never wrote, undecodable values, and so on). A
record refused that way still counts as received, so it is not asked for again.

Purity: time comes only from ``tick(now)``, wall-clock milliseconds for the clock
only from the injected ``wall_ms``, randomness only from the injected ``Random``;
nothing iterates a hash-ordered set before drawing from it, so a seed reproduces a
run exactly.

Restarts: a core starts a new incarnation (a fresh origin id) every time it is
constructed, so a restarted node's versions never collide with those it issued
before; it receives its own earlier writes back like anyone else's. Known limit:
digests keep one entry per incarnation ever seen, so they grow with restarts over
a cluster's life (about 30 bytes each).

Trust: peers are authenticated by the envelope layer and believed about what they
hold. A certified peer that lies in ``advances`` can make this node skip writes of
an origin; one that sends huge timestamps wins keys by last-writer-wins (such
timestamps are not folded into our clock, see ``timestamps_unobserved``).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import is_
from random import Random
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from consensus.core import Incoming, Outgoing
from consensus.gossip.changes import Change, ChangeKind
from consensus.gossip.lww import Entry, LWWMap, entry_of, lww_supersedes
from consensus.gossip.messages import (
    DELTAS,
    DIGEST,
    MESSAGE_KINDS,
    NODE_ID_BYTES_MAX,
    ORIGINS_WIRE_MAX,
    GossipDeltas,
    GossipDigest,
    GossipRecord,
    make_origin,
    record_size_bytes,
    trusted,
    writer_of,
)
from consensus.gossip.orset import ORSet, Tag, tag_supersedes
from consensus.gossip.rumors import RumorQueue
from consensus.gossip.settings import GossipSettings
from consensus.gossip.tombstones import TombstoneCollector
from consensus.gossip.values import MALFORMED_VALUE_ERRORS, decode_value, encode_value
from consensus.gossip.versions import (
    OriginLog,
    VersionTracker,
    log_add,
    log_discard,
    log_has,
    log_since,
)
from consensus.hlc import LOGICAL_BITS, HybridClock, make_timestamp

__all__ = ["COUNTERS", "COUNTER_NAMES", "Gossip"]

TagKey = tuple[str, bytes, int]
"""Store key of an OR-set tag record: (set name, adding origin, add timestamp)."""
StoreKey = str | TagKey
"""Map records are stored under their key, tag records under a ``TagKey``."""

COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "writes_local": "local writes (set, delete, set_add, one per tag a set_remove kills)",
        "digests_sent": "digests sent, fanout per round",
        "digests_received": "digests received",
        "deltas_sent": "deltas messages sent (answers and requests)",
        "deltas_received": "deltas messages received",
        "records_sent": "records sent in deltas",
        "rumors_sent": "records piggybacked on digests as rumours",
        "records_applied": "remote records that changed the stored state",
        "records_redundant": "remote records already had, or older than what is stored",
        "records_key_oversize": "remote records refused: key over key_bytes_max",
        "records_value_oversize": "remote records refused: value over value_bytes_max",
        "records_malformed": "remote records refused: value bytes are not one msgpack value",
        "records_over_limit": "remote records refused: the store holds keys_max records",
        "records_own_unknown": "remote records claiming a version of ours never written",
        "deltas_truncated": "deltas cut short by deltas_per_message_max/message_bytes_max",
        "digest_truncated": "digests cut to the wire's origin limit",
        "rumors_dropped": "rumours dropped from a full queue (anti-entropy still delivers)",
        "pending_dropped": "out-of-order versions forgotten (they are fetched again)",
        "tombstones_collected": "tombstones forgotten after every member had them",
        "changes_dropped": "change events dropped because take_changes lagged",
        "timestamps_unobserved": "remote timestamps too large to fold into the clock",
        "messages_ignored": "messages of an unknown payload type, or from ourselves",
    }
)
"""Every name in ``Gossip.counters`` with what it counts; all start at zero."""
COUNTER_NAMES = tuple(COUNTERS)
"""The names in ``Gossip.counters``."""

# A remote timestamp this large is not folded into our clock: following it would
# push our own timestamps towards the wire's 2**63 ceiling.
_OBSERVE_TIMESTAMP_MAX = 1 << 62
_FINGERPRINT_MODULUS = 1 << 128
_LOGICAL_MAX = (1 << LOGICAL_BITS) - 1
_DIGEST_PAIR_BYTES = 40  # estimated wire size of one (origin, version) pair
_INCARNATION_RANDOM_BITS = 16


class Gossip:
    """One node's gossip state and protocol; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: bytes,
        settings: GossipSettings,
        rng: Random,
        wall_ms: Callable[[], int],
        now: float = 0.0,
    ) -> None:
        if not 1 <= len(node_id) <= NODE_ID_BYTES_MAX:
            raise ValueError(f"node_id of {len(node_id)} bytes must be 1 to {NODE_ID_BYTES_MAX}")
        self._node_id = node_id
        self._settings = settings
        self._rng = rng
        self._wall_ms = wall_ms
        self._clock = HybridClock()
        # Wall time in the high bits keeps incarnations of one node distinct across
        # restarts even when the simulator reseeds; the random bits cover restarts
        # within one millisecond.
        incarnation = (max(0, self._wall()) << _INCARNATION_RANDOM_BITS) | rng.getrandbits(
            _INCARNATION_RANDOM_BITS
        )
        self._origin = make_origin(node_id, incarnation & ((1 << 64) - 1))
        self._version = 0
        self._map = LWWMap()
        self._tags: dict[TagKey, GossipRecord] = {}
        self._sets: dict[str, ORSet] = {}
        self._logs: dict[bytes, OriginLog] = {}
        self._versions = VersionTracker()
        self._rumors = RumorQueue(settings.rumor_queue_max)
        self._collector: TombstoneCollector[StoreKey] = TombstoneCollector()
        self._members: list[bytes] = []
        self._outbox: list[Outgoing] = []
        self._changes: deque[Change] = deque()
        self._last_digest: GossipDigest | None = None
        self._fingerprint = 0
        self._rounds = 0
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        # A random first round spreads the nodes' rounds over the interval.
        self._next_round_at = now + rng.random() * settings.round_interval_s

    # -- driver interface ----------------------------------------------------------

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """``gossip.digest`` and ``gossip.deltas`` with their payload models."""
        return MESSAGE_KINDS

    def step(self, message: Incoming) -> None:
        """Feed one received, verified message. Never raises on a schema-valid payload."""
        payload = message.payload
        if message.sender == self._node_id:
            self._counters["messages_ignored"] += 1
        elif isinstance(payload, GossipDigest):
            self._on_digest(message.sender, payload)
        elif isinstance(payload, GossipDeltas):
            self._on_deltas(message.sender, payload)
        else:
            self._counters["messages_ignored"] += 1

    def tick(self, now: float) -> None:
        """Advance time; runs a round (collection, digests to ``fanout`` peers) when due."""
        if now < self._next_round_at:
            return
        interval = self._settings.round_interval_s
        self._next_round_at += interval
        if self._next_round_at <= now:
            # The driver fell behind: skip the missed rounds rather than burst them.
            self._next_round_at = now + interval
        self._round()

    def take_outbox(self) -> list[Outgoing]:
        """Remove and return the messages produced since the last call, in order."""
        outbox = self._outbox
        if outbox:  # drivers ask after every batch, mostly in vain
            self._outbox = []
            return outbox
        return []

    def take_changes(self) -> list[Change]:
        """Remove and return the visible changes since the last call, in the order applied."""
        if not self._changes:
            return []
        changes = list(self._changes)
        self._changes.clear()
        return changes

    def update_members(self, node_ids: Sequence[bytes]) -> None:
        """Set the live peers (this node excluded, if present) gossip may contact."""
        # Drivers call this often with a large cluster's sorted live list; keep the
        # work in C: sorting a sorted list is one pass, and so is checking for repeats.
        if node_ids == self._members:
            return  # unchanged (and already sorted, unique, without us)
        members = sorted(node_ids)
        if len(set(members)) != len(members):
            members = sorted(set(members))
        position = bisect_left(members, self._node_id)
        if position < len(members) and members[position] == self._node_id:
            del members[position]
        if members == self._members:
            return  # unchanged: keep the tombstone confirmations gathered so far
        self._members = members
        self._collector.set_members(members)

    # -- the map -------------------------------------------------------------------

    def set(self, key: str, value: Any) -> Entry:
        """Write ``value`` under ``key`` and return the entry written.

        Raises ``ValueError`` when the key or the encoded value exceeds its limit or
        the store holds ``keys_max`` records, ``TypeError`` for a value gossip cannot
        carry (see ``values.encode_value``).
        """
        self._check_key(key, "key")
        data = self._check_value(value, "value")
        if self._map.record(key) is None:
            self._check_room()
        record = self._new_record(key, data, deleted=False, tag=None)
        self._commit_local(key, record)
        return entry_of(record)

    def delete(self, key: str) -> Entry | None:
        """Delete ``key`` (writing a tombstone); None if it is absent or already deleted."""
        if not isinstance(key, str):
            raise TypeError(f"key must be str, not {type(key).__name__}")
        previous = self._map.record(key)
        if previous is None or previous.deleted:
            return None
        record = self._new_record(key, b"", deleted=True, tag=None)
        self._commit_local(key, record)
        return entry_of(record)

    def get(self, key: str) -> Any | None:
        """The value of ``key`` (a fresh copy), or None if absent or deleted."""
        record = self._map.record(key)
        if record is None or record.deleted:
            return None
        return decode_value(record.value)

    def entry(self, key: str) -> Entry | None:
        """The entry for ``key``, tombstones included; None if none is stored."""
        record = self._map.record(key)
        return None if record is None else entry_of(record)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Live (key, value) pairs whose key starts with ``prefix``, sorted by key."""
        return [(record.key, decode_value(record.value)) for record in self._map.live(prefix)]

    # -- named observed-remove sets ------------------------------------------------

    def set_add(self, name: str, element: Any) -> None:
        """Add ``element`` to the OR-set ``name`` (a new unique tag; add wins over removes
        that have not seen it). Limits and errors as for ``set``."""
        self._check_key(name, "set name")
        data = self._check_value(element, "element")
        self._check_room()
        timestamp = self._clock.now(self._wall())
        tag = (self._origin, timestamp)
        record = self._new_record(name, data, deleted=False, tag=tag, timestamp=timestamp)
        self._commit_local((name, tag[0], tag[1]), record)

    def set_remove(self, name: str, element: Any) -> None:
        """Remove ``element`` from the OR-set ``name``: kill the tags seen here."""
        data = encode_value(element)
        orset = self._sets.get(name)
        if orset is None:
            return
        for tag in orset.tags_of(data):
            record = self._new_record(name, b"", deleted=True, tag=tag)
            self._commit_local((name, tag[0], tag[1]), record)

    def set_elements(self, name: str) -> list[Any]:
        """The elements of the OR-set ``name``, ordered by their canonical msgpack bytes."""
        orset = self._sets.get(name)
        return [] if orset is None else orset.elements()

    # -- for drivers and checkers --------------------------------------------------

    @property
    def node_id(self) -> bytes:
        """This node's id (the ``writer`` of its entries)."""
        return self._node_id

    @property
    def origin(self) -> bytes:
        """This incarnation's origin id: the key of its versions in digests."""
        return self._origin

    @property
    def rounds(self) -> int:
        """Anti-entropy rounds run so far."""
        return self._rounds

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the event counts named in ``COUNTER_NAMES``."""
        counters = dict(self._counters)
        counters["rumors_dropped"] = self._rumors.dropped
        counters["pending_dropped"] = self._versions.pending_dropped
        return counters

    def digest(self) -> dict[bytes, int]:
        """Origin -> highest version fully received (this node's own origin included)."""
        return dict(self._versions.watermarks)

    def state_fingerprint(self) -> bytes:
        """A BLAKE2b hash of the visible state (live keys and values, OR-set contents).

        Maintained incrementally (a sum of per-item hashes), so it costs O(1); two
        nodes have equal fingerprints exactly when their visible states are equal.
        """
        return hashlib.blake2b(self._fingerprint.to_bytes(16, "big"), digest_size=32).digest()

    def has_version(self, origin: bytes, version: int) -> bool:
        """Whether write ``version`` of ``origin`` (an ``origin`` id) reached this node,
        itself or a later write that overwrote it."""
        return version <= 0 or self._versions.covers(origin, version)

    def last_version(self) -> int:
        """The version of this incarnation's latest write (0 before the first)."""
        return self._version

    # -- local writes --------------------------------------------------------------

    def _wall(self) -> int:
        return int(self._wall_ms())

    def _check_key(self, key: str, what: str) -> None:
        if not isinstance(key, str):
            raise TypeError(f"{what} must be str, not {type(key).__name__}")
        size = _utf8_length(key)
        if size is None:
            raise ValueError(f"{what} {key!r} is not valid UTF-8")
        if size == 0:
            raise ValueError(f"{what} must not be empty")
        limit = self._settings.key_bytes_max
        if size > limit:
            raise ValueError(f"{what} of {size} bytes exceeds key_bytes_max ({limit})")

    def _check_value(self, value: Any, what: str) -> bytes:
        data = encode_value(value)
        limit = self._settings.value_bytes_max
        if len(data) > limit:
            raise ValueError(
                f"{what} of {len(data)} bytes (msgpack) exceeds value_bytes_max ({limit})"
            )
        return data

    def _check_room(self) -> None:
        limit = self._settings.keys_max
        if self._record_count() >= limit:
            raise ValueError(
                f"gossip store is full: it holds keys_max ({limit}) records "
                "(map keys, tombstones and set tags)"
            )

    def _record_count(self) -> int:
        return len(self._map) + len(self._tags)

    def _new_record(
        self, key: str, value: bytes, *, deleted: bool, tag: Tag | None, timestamp: int = 0
    ) -> GossipRecord:
        self._version += 1
        return trusted(
            GossipRecord,
            {
                "key": key,
                "value": value,
                "deleted": deleted,
                "timestamp": timestamp or self._clock.now(self._wall()),
                "origin": self._origin,
                "version": self._version,
                "tag": tag,
            },
        )

    def _commit_local(self, key: StoreKey, record: GossipRecord) -> None:
        self._counters["writes_local"] += 1
        self._versions.receive(self._origin, record.version)
        previous = self._lookup(key)
        # Our clock is past every timestamp we stored, except ones too large to
        # observe (see _observe); against those a local write loses, as it should.
        if previous is None or self._supersedes(record, previous):
            value = None if record.deleted else decode_value(record.value)
            self._install(key, record, previous, value)

    # -- applying records ----------------------------------------------------------

    def _lookup(self, key: StoreKey) -> GossipRecord | None:
        return self._map.record(key) if isinstance(key, str) else self._tags.get(key)

    @staticmethod
    def _supersedes(new: GossipRecord, old: GossipRecord) -> bool:
        return lww_supersedes(new, old) if new.tag is None else tag_supersedes(new, old)

    def _observe(self, records: Iterable[GossipRecord]) -> None:
        latest = 0
        for record in records:
            timestamp = record.timestamp
            if timestamp > _OBSERVE_TIMESTAMP_MAX:
                self._counters["timestamps_unobserved"] += 1
            elif timestamp > latest:
                latest = timestamp
        if latest > self._clock.last:
            self._clock.observe(latest, self._wall())

    def _apply_all(self, records: Sequence[GossipRecord]) -> None:
        self._observe(records)
        # Most rumours are duplicates; dismiss those below the watermark right here.
        watermark = self._versions.watermarks.get
        redundant = 0
        for record in records:
            if record.version <= watermark(record.origin, 0):
                redundant += 1
            else:
                self._apply_remote(record)
        self._counters["records_redundant"] += redundant

    def _apply_remote(self, record: GossipRecord) -> None:
        counters = self._counters
        origin, version = record.origin, record.version
        if origin == self._origin:
            unknown = version > self._version
            counters["records_own_unknown" if unknown else "records_redundant"] += 1
            return
        versions = self._versions
        if versions.covers(origin, version):
            counters["records_redundant"] += 1
            return
        log = self._logs.get(origin)
        if log and version <= log[-1].version and log_has(log, version):
            # Stored but not covered: its pending mark was dropped (a duplicate), or a
            # peer reuses the version for another record.
            counters["records_redundant"] += 1
            return
        versions.receive(origin, version)
        key_bytes_max = self._settings.key_bytes_max
        if 4 * len(record.key) > key_bytes_max:  # only then can the UTF-8 form be too long
            size = _utf8_length(record.key)
            if size is None or size > key_bytes_max:
                counters["records_key_oversize"] += 1
                return
        if len(record.value) > self._settings.value_bytes_max:
            counters["records_value_oversize"] += 1
            return
        tag = record.tag
        key: StoreKey
        if tag is None:
            key = record.key
            previous = self._map.record(key)
            wins = previous is None or lww_supersedes(record, previous)
        else:
            key = (record.key, tag[0], tag[1])
            previous = self._tags.get(key)
            wins = previous is None or tag_supersedes(record, previous)
        if not wins:
            counters["records_redundant"] += 1
            return
        value = None
        if not record.deleted:
            try:
                value = decode_value(record.value)
            except MALFORMED_VALUE_ERRORS:
                counters["records_malformed"] += 1
                return
        if previous is None and len(self._map) + len(self._tags) >= self._settings.keys_max:
            counters["records_over_limit"] += 1
            return
        self._install(key, record, previous, value)
        counters["records_applied"] += 1

    def _install(
        self, key: StoreKey, record: GossipRecord, previous: GossipRecord | None, value: Any
    ) -> None:
        """Store the winning ``record`` under ``key`` and publish its effects (``value``
        is the record's decoded value, None for tombstones)."""
        if previous is not None:
            previous_log = self._logs[previous.origin]
            log_discard(previous_log, previous.version)
            if not previous_log:
                del self._logs[previous.origin]
            if previous.deleted:
                self._collector.untrack(previous.origin)
        log = self._logs.get(record.origin)
        if log is None:
            self._logs[record.origin] = [record]
        else:
            log_add(log, record)
        if record.deleted:
            self._collector.track(record.origin, record.version, key, record.timestamp)
        if isinstance(key, str):
            self._map.put(record)
            self._map_changed(record, previous, value)
        else:
            self._tags[key] = record
            self._tag_changed(record, value)
        multiplier = self._settings.rumor_retransmit_multiplier
        if multiplier:
            # ceil(log2(n + 1)) for a cluster of n nodes is n.bit_length().
            cluster = len(self._members) + 1
            self._rumors.push(key, record, multiplier * cluster.bit_length())

    def _map_changed(self, record: GossipRecord, previous: GossipRecord | None, value: Any) -> None:
        was_live = previous is not None and not previous.deleted
        if record.deleted:
            if previous is not None and was_live:
                self._fingerprint_sub(_item_hash(b"k", previous.key, previous.value))
                self._emit(record, ChangeKind.DELETED, None)
            return
        if previous is not None and was_live:
            if previous.value == record.value:
                return
            self._fingerprint_sub(_item_hash(b"k", previous.key, previous.value))
        self._fingerprint_add(_item_hash(b"k", record.key, record.value))
        self._emit(record, ChangeKind.SET, value)

    def _tag_changed(self, record: GossipRecord, value: Any) -> None:
        tag = record.tag
        assert tag is not None, record
        orset = self._sets.get(record.key)
        if orset is None:
            orset = self._sets[record.key] = ORSet()
        if record.deleted:
            element = orset.remove_tag(tag)
            if element is not None:
                self._fingerprint_sub(_item_hash(b"s", record.key, element))
                self._emit(record, ChangeKind.ELEMENT_REMOVED, decode_value(element))
        elif orset.add_tag(tag, record.value):
            self._fingerprint_add(_item_hash(b"s", record.key, record.value))
            self._emit(record, ChangeKind.ELEMENT_ADDED, value)

    def _emit(self, record: GossipRecord, kind: ChangeKind, value: Any) -> None:
        if len(self._changes) >= self._settings.changes_max:
            self._changes.popleft()
            self._counters["changes_dropped"] += 1
        self._changes.append(
            Change(record.key, kind, value, record.timestamp, writer_of(record.origin))
        )

    def _fingerprint_add(self, item_hash: int) -> None:
        self._fingerprint = (self._fingerprint + item_hash) % _FINGERPRINT_MODULUS

    def _fingerprint_sub(self, item_hash: int) -> None:
        self._fingerprint = (self._fingerprint - item_hash) % _FINGERPRINT_MODULUS

    # -- anti-entropy --------------------------------------------------------------

    def _round(self) -> None:
        self._rounds += 1
        self._collect_tombstones()
        members = self._members
        if not members:
            return
        settings = self._settings
        peers = self._rng.sample(members, min(settings.fanout, len(members)))
        versions = self._versions
        digest = versions.digest(ORIGINS_WIRE_MAX)
        if len(digest) < len(versions.watermarks):
            self._counters["digest_truncated"] += 1
            summary = b""  # it would not describe the digest sent
        else:
            summary = versions.summary()
        rumor_bytes = settings.message_bytes_max - _DIGEST_PAIR_BYTES * len(digest)
        # Peers that get the same rumours get the same (immutable) payload object, and
        # so does the next round while nothing changes: cheaper to build, and to
        # encode for drivers that cache encodings by identity.
        if settings.rumors_per_message_max and len(self._rumors):
            batches = self._rumors.take_many(
                settings.rumors_per_message_max, rumor_bytes, len(peers)
            )
        else:
            batches = [()] * len(peers)
        payload = self._last_digest
        for peer, rumors in zip(peers, batches, strict=True):
            self._counters["rumors_sent"] += len(rumors)
            if (
                payload is None
                or payload.digest is not digest
                or not _same_objects(payload.rumors, rumors)
            ):
                payload = trusted(
                    GossipDigest, {"digest": digest, "summary": summary, "rumors": rumors}
                )
            self._send(DIGEST, payload, peer)
        self._last_digest = payload

    def _on_digest(self, sender: bytes, payload: GossipDigest) -> None:
        self._counters["digests_received"] += 1
        versions = self._versions
        summary = payload.summary
        theirs: Mapping[bytes, int]
        if summary and summary == versions.summary():
            # Their digest equals our watermarks: read those instead of building a
            # dict of theirs (most digests in a quiet cluster end here).
            self._collector.note_digest(sender, versions.watermarks)
            if payload.rumors:
                self._apply_all(payload.rumors)
            if summary == versions.summary() and not versions.has_pending:
                return  # in sync: the exchange is this one digest
            theirs = dict(payload.digest)
        elif summary and (then := versions.since(summary)) is not None:
            # They are where we were a few moves ago: their digest is our watermarks
            # with the moved ones put back, and they lack exactly what moved.
            self._collector.note_digest(sender, versions.state_then(then))
            if payload.rumors:
                self._apply_all(payload.rumors)
            moved = versions.since(summary)  # the rumours may have moved more
            if moved is not None and not versions.has_pending:
                records, advances = self._deltas(versions.lacking_since(moved))
                deltas = {"records": records, "advances": advances, "request": ()}
                self._send(DELTAS, trusted(GossipDeltas, deltas), sender)
                return
            theirs = dict(payload.digest)
        else:
            theirs = dict(payload.digest)
            self._collector.note_digest(sender, theirs)
            if payload.rumors:
                self._apply_all(payload.rumors)
            if versions.matches(theirs):
                return  # in sync: the exchange is this one digest
        lacking, behind = versions.compare(theirs)
        own = self._origin
        request = tuple(pair for pair in behind if pair[0] != own)
        if lacking or request:
            records, advances = self._deltas(lacking)
            self._send(
                DELTAS,
                trusted(
                    GossipDeltas, {"records": records, "advances": advances, "request": request}
                ),
                sender,
            )

    def _on_deltas(self, sender: bytes, payload: GossipDeltas) -> None:
        self._counters["deltas_received"] += 1
        if payload.records:
            self._apply_all(payload.records)
        own = self._origin
        for origin, start, end in payload.advances:
            if origin != own:
                self._versions.advance(origin, start, end)
        if not payload.request:
            return
        self._collector.note_versions(sender, payload.request)
        top = self._versions.top
        lacking = [
            (origin, version)
            for origin, version in dict(payload.request).items()
            if top(origin) > version
        ]
        if lacking:
            records, advances = self._deltas(lacking)
            self._send(
                DELTAS,
                trusted(GossipDeltas, {"records": records, "advances": advances, "request": ()}),
                sender,
            )

    def _deltas(
        self, lacking: list[tuple[bytes, int]]
    ) -> tuple[tuple[GossipRecord, ...], tuple[tuple[bytes, int, int], ...]]:
        """Records above each (origin, version) in ``lacking``, lowest versions first,
        within the message limits, and the advances they justify."""
        records: list[GossipRecord] = []
        advances: list[tuple[bytes, int, int]] = []
        count = len(lacking)
        if not count:
            return (), ()
        count_max = self._settings.deltas_per_message_max
        bytes_left = self._settings.message_bytes_max - _DIGEST_PAIR_BYTES * count
        # Start at a random origin so that, when the budget runs out, no origin is
        # always served last.
        first = self._rng.randrange(count) if count > 1 else 0
        watermark = self._versions.watermarks.get
        for index in range(count):
            origin, have = lacking[(first + index) % count]
            last, truncated = have, False
            log = self._logs.get(origin)
            if log is not None:
                for record in log_since(log, have):
                    size = record_size_bytes(record)
                    # The first record always goes: settings make one record fit a
                    # message, and a record that never fits would stall its origin.
                    if len(records) >= count_max or (size > bytes_left and records):
                        truncated = True
                        break
                    records.append(record)
                    bytes_left -= size
                    last = record.version
            # Everything we have up to our watermark is in this message (or was
            # overwritten); cut short, only up to the last version sent.
            end = min(last, watermark(origin, 0)) if truncated else watermark(origin, 0)
            if end > have:
                advances.append((origin, have, end))
            if truncated:
                self._counters["deltas_truncated"] += 1
                break
        self._counters["records_sent"] += len(records)
        return tuple(records), tuple(advances)

    def _send(self, kind: str, payload: BaseModel, peer: bytes) -> None:
        self._counters["digests_sent" if kind == DIGEST else "deltas_sent"] += 1
        self._outbox.append(Outgoing(kind, (payload,), to_node=peer))

    # -- tombstone collection ------------------------------------------------------

    def _collect_tombstones(self) -> None:
        if not self._collector:
            return
        grace_ms = int(self._settings.tombstone_grace_s * 1000)
        cutoff = make_timestamp(max(0, self._wall() - grace_ms), _LOGICAL_MAX)
        for key in self._collector.collect(self._is_current_tombstone, cutoff):
            self._forget(key)

    def _is_current_tombstone(self, origin: bytes, version: int, key: StoreKey) -> bool:
        record = self._lookup(key)
        return (
            record is not None
            and record.deleted
            and record.version == version
            and record.origin == origin
        )

    def _forget(self, key: StoreKey) -> None:
        record = self._lookup(key)
        assert record is not None and record.deleted, (key, record)
        log = self._logs[record.origin]
        log_discard(log, record.version)
        if not log:
            del self._logs[record.origin]
        self._rumors.discard(key)
        if isinstance(key, str):
            self._map.discard(key)
        else:
            del self._tags[key]
            orset = self._sets[record.key]
            assert record.tag is not None, record
            orset.forget(record.tag)
            if orset.is_empty():
                del self._sets[record.key]
        self._counters["tombstones_collected"] += 1


def _same_objects(first: Sequence[object], second: Sequence[object]) -> bool:
    """Whether two sequences hold the very same objects, in order."""
    return first is second or (len(first) == len(second) and all(map(is_, first, second)))


def _utf8_length(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates cannot travel as msgpack str
        return None


def _item_hash(kind: bytes, name: str, value: bytes) -> int:
    name_bytes = name.encode("utf-8", "surrogatepass")
    data = kind + len(name_bytes).to_bytes(4, "big") + name_bytes + value
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")
