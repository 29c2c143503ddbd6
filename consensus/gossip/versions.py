"""Per-origin version bookkeeping for Scuttlebutt-style reconciliation.

How this works: each write gets the next version number of its origin. A node
tracks, per origin, a *watermark*: every version up to it has been received, or
was overwritten before it arrived (either way nothing up to it is missing). A
rumour can arrive ahead of the watermark; its version waits in a small pending
set until the gap closes, either because the missing versions arrive or because a
peer's deltas say the gap is covered (``advance``). The watermarks are the digest.
Alongside, the tracker keeps the digest's *summary*: a 16-byte hash of the
watermarks that does not depend on their order, maintained as a sum of one hash
per (origin, watermark) so a watermark move updates it in O(1). Equal summaries
mean equal watermarks (up to a 128-bit hash collision), which lets a receiver
that is in sync with a digest's sender skip reading the digest. The summaries of
the last few states are kept too, with the watermarks moved since each: a digest
from a peer that is where this node was a few moves ago (the usual way two nodes
differ while a write spreads) is answered from those moves alone.

An *origin log* is the list of records a node currently stores for one origin,
sorted by version, so answering "what has origin O written after version v" is a
binary search and then only the answer. A record that is overwritten leaves its
origin's log. Plain lists keep this small: a thousand-node simulation holds a
thousand origins in each of a thousand cores.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from operator import attrgetter

from consensus.gossip.messages import GossipRecord

__all__ = [
    "PENDING_VERSIONS_MAX",
    "OriginLog",
    "VersionTracker",
    "log_add",
    "log_discard",
    "log_has",
    "log_since",
]

PENDING_VERSIONS_MAX = 4096
"""Versions kept above one origin's watermark. Beyond it they are forgotten (which
is safe: anti-entropy resends them) so a flood of rumours cannot grow memory."""

OriginLog = list[GossipRecord]
"""The records stored for one origin, in increasing version order."""

_version = attrgetter("version")
_SUMMARY_BYTES = 16
_HISTORY_STATES = 16  # recent states whose summaries are remembered
_MOVES_TRIM = 64  # moves no remembered state needs any more, dropped in batches
_SUMMARY_MODULUS = 1 << (8 * _SUMMARY_BYTES)


def _pair_hash(origin: bytes, version: int) -> int:
    # The version is always the last 8 bytes, so (origin, version) splits one way only.
    data = origin + version.to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=_SUMMARY_BYTES).digest(), "big")


def log_add(log: OriginLog, record: GossipRecord) -> None:
    """Insert ``record`` (its version is not in ``log``)."""
    if not log or record.version > log[-1].version:
        log.append(record)  # the common case: versions arrive in order
    else:
        insort(log, record, key=_version)


def log_discard(log: OriginLog, version: int) -> None:
    """Remove the record at ``version``, if stored."""
    index = bisect_left(log, version, key=_version)
    if index < len(log) and log[index].version == version:
        del log[index]


def log_has(log: OriginLog, version: int) -> bool:
    """Whether a record at ``version`` is stored."""
    index = bisect_left(log, version, key=_version)
    return index < len(log) and log[index].version == version


def log_since(log: OriginLog, version: int) -> Iterable[GossipRecord]:
    """Stored records with a version above ``version``, lowest first."""
    start = bisect_right(log, version, key=_version)
    return log[start:] if start else log


class VersionTracker:
    """Per origin: the watermark and the pending versions above it."""

    __slots__ = (
        "_digest",
        "_history",
        "_moves",
        "_moves_dropped",
        "_pairs",
        "_pending",
        "_positions",
        "_summary",
        "_summary_sum",
        "_watermarks",
        "pending_dropped",
    )

    def __init__(self) -> None:
        self._watermarks: dict[bytes, int] = {}
        self._pending: dict[bytes, set[int]] = {}
        # The digest's pairs kept up to date one origin at a time (a watermark moves
        # about once a round in a busy cluster, and rebuilding every pair of every
        # origin each time costs more than the rest of the round), with each
        # origin's position in that list.
        self._pairs: list[tuple[bytes, int]] = []
        self._positions: dict[bytes, int] = {}
        self._digest: tuple[tuple[bytes, int], ...] | None = None
        self._summary_sum = 0
        self._summary: bytes | None = None
        # Every watermark move, as (origin, its watermark before; 0 if new), oldest
        # first, less the first ``_moves_dropped``; and for each recent state, its
        # summary -> how many moves had been made when it was the state.
        self._moves: list[tuple[bytes, int]] = []
        self._moves_dropped = 0
        self._history: dict[bytes, int] = {}
        self.pending_dropped = 0

    def watermark(self, origin: bytes) -> int:
        """Every version of ``origin`` up to this one is received or covered."""
        return self._watermarks.get(origin, 0)

    def top(self, origin: bytes) -> int:
        """The highest version of ``origin`` received, pending ones included."""
        pending = self._pending.get(origin)
        return max(pending) if pending else self._watermarks.get(origin, 0)

    def covers(self, origin: bytes, version: int) -> bool:
        """Whether ``version`` of ``origin`` was received (or covered by a later write)."""
        if version <= self._watermarks.get(origin, 0):
            return True
        pending = self._pending.get(origin)
        return pending is not None and version in pending

    @property
    def watermarks(self) -> Mapping[bytes, int]:
        """Origin -> watermark (read-only view; origins in first-seen order)."""
        return self._watermarks

    @property
    def has_pending(self) -> bool:
        """Whether any version is held above its origin's watermark."""
        return bool(self._pending)

    def matches(self, watermarks: Mapping[bytes, int]) -> bool:
        """Whether ``watermarks`` equals ours and we hold nothing above them: in sync."""
        return not self._pending and watermarks == self._watermarks

    def lacking(self, theirs: Mapping[bytes, int]) -> list[tuple[bytes, int]]:
        """(origin, their version) for each origin where we received more than ``theirs``."""
        have = theirs.get
        lacking = [
            (origin, have(origin, 0))
            for origin, watermark in self._watermarks.items()
            if watermark > have(origin, 0)
        ]
        if self._pending:
            listed = {origin for origin, _ in lacking}  # membership tests only
            for origin, pending in self._pending.items():
                if origin not in listed and max(pending) > have(origin, 0):
                    lacking.append((origin, have(origin, 0)))
        return lacking

    def compare(
        self, theirs: Mapping[bytes, int]
    ) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
        """``(lacking(theirs), behind)``, where ``behind`` is (origin, our watermark) for
        each origin where ``theirs`` is higher, in their order.

        One pass over ``theirs`` finds both when nothing is pending (the common case:
        digests differ in an origin or two, often one they have not heard of yet);
        otherwise ``lacking`` is worked out in full.
        """
        get = self._watermarks.get
        behind: list[tuple[bytes, int]] = []
        ahead: list[tuple[bytes, int]] = []
        known = 0
        for origin, version in theirs.items():
            have = get(origin, 0)
            if have:
                known += 1
            if version > have:
                behind.append((origin, have))
            elif version < have:
                ahead.append((origin, version))
        if self._pending:
            return self.lacking(theirs), behind
        if known < len(self._watermarks):
            ahead += [(origin, 0) for origin in self._watermarks.keys() - theirs.keys()]
        if len(ahead) > 1:
            ahead.sort(key=lambda pair: self._positions[pair[0]])  # our order, as lacking()
        return ahead, behind

    def receive(self, origin: bytes, version: int) -> None:
        """Note that ``version`` of ``origin`` arrived (the caller checked ``covers``)."""
        watermark = self._watermarks.get(origin, 0)
        assert version > watermark, (origin, version, watermark)
        if version == watermark + 1:
            self._raise(origin, version)
            return
        pending = self._pending.setdefault(origin, set())
        if len(pending) >= PENDING_VERSIONS_MAX:
            self.pending_dropped += len(pending)
            pending.clear()
        pending.add(version)

    def advance(self, origin: bytes, start: int, end: int) -> bool:
        """A peer says: after its records, nothing of ``origin`` in (start, end] is missing.

        That holds for us only if we already had everything up to ``start``.
        Returns whether the watermark moved.
        """
        watermark = self._watermarks.get(origin, 0)
        if watermark < start or end <= watermark:
            return False
        pending = self._pending.get(origin)
        if pending:
            pending.difference_update([v for v in pending if v <= end])
        self._raise(origin, end)
        return True

    def digest(self, origins_max: int) -> tuple[tuple[bytes, int], ...]:
        """(origin, watermark) pairs, cached until a watermark moves; at most ``origins_max``."""
        digest = self._digest
        if digest is None:
            pairs = self._pairs
            kept = pairs if len(pairs) <= origins_max else pairs[:origins_max]
            digest = self._digest = tuple(kept)
        return digest

    def summary(self) -> bytes:
        """The order-independent 16-byte hash of all the watermarks (see the module doc)."""
        summary = self._summary
        if summary is None:
            summary = self._summary = self._summary_sum.to_bytes(_SUMMARY_BYTES, "big")
        return summary

    def since(self, summary: bytes) -> dict[bytes, int] | None:
        """If ``summary`` is that of one of our recent states: each origin whose
        watermark moved since, with its watermark then (0: not known then).

        Our watermarks with these values put back are that state's. None when the
        summary is not one of ours (unknown, too old, or the current one).
        """
        made = self._history.get(summary)
        if made is None:
            return None
        then: dict[bytes, int] = {}
        for origin, before in self._moves[made - self._moves_dropped :]:
            then.setdefault(origin, before)  # the first move of each tells its value then
        return then

    def state_then(self, then: Mapping[bytes, int]) -> dict[bytes, int]:
        """The watermarks of the recent state ``then`` came from (see ``since``)."""
        state = dict(self._watermarks)  # a copy of a dict: one pass in C
        state.update(then)
        for origin, before in then.items():
            if not before:
                del state[origin]
        return state

    def lacking_since(self, then: Mapping[bytes, int]) -> list[tuple[bytes, int]]:
        """``lacking(theirs)`` for a peer whose digest is the state ``then`` came from
        (see ``since``), when nothing is pending: the moved origins, in our order."""
        assert not self._pending
        positions = self._positions
        return sorted(then.items(), key=lambda pair: positions[pair[0]])

    def _remember(self, origin: bytes, before: int) -> None:
        """Note the state about to be left (its summary) and the move leaving it."""
        history = self._history
        history[self.summary()] = self._moves_dropped + len(self._moves)
        self._moves.append((origin, before))
        if len(history) > _HISTORY_STATES:
            del history[next(iter(history))]  # dicts keep insertion order: the oldest
            unneeded = next(iter(history.values())) - self._moves_dropped
            if unneeded >= _MOVES_TRIM:
                del self._moves[:unneeded]
                self._moves_dropped += unneeded

    def _raise(self, origin: bytes, watermark: int) -> None:
        pending = self._pending.get(origin)
        if pending is not None:
            while watermark + 1 in pending:
                watermark += 1
                pending.discard(watermark)
            if not pending:
                del self._pending[origin]
        old = self._watermarks.get(origin)
        self._remember(origin, old or 0)
        total = self._summary_sum + _pair_hash(origin, watermark)
        if old is None:
            self._positions[origin] = len(self._pairs)
            self._pairs.append((origin, watermark))
        else:
            total -= _pair_hash(origin, old)
            self._pairs[self._positions[origin]] = (origin, watermark)
        self._summary_sum = total % _SUMMARY_MODULUS
        self._watermarks[origin] = watermark
        self._digest = None
        self._summary = None
