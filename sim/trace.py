"""The run's fingerprint: an incremental hash over every delivery and fault.

How this works: each delivered message becomes a record of its arrival time (a
float, kept exact), source and destination node index and kind; in
``TraceMode.FULL`` there is one record per payload, carrying a canonical
encoding of the payload's content too (``canonical_payload``: msgpack of its
field values in field order, nested models encoded the same way). Each fault
is a record of its time and script text. Records are msgpack-packed in
fixed-size batches into a BLAKE2b hash. Two runs with the same seed must
produce the same digest bit for bit; a differing digest is the first sign of
hidden nondeterminism (set iteration order, a real clock, global randomness).

Encoding every payload is most of the cost of tracing a large simulation, so
the recorder leans on how cores send: one payload object often goes to many
peers (a broadcast), and a long field (a gossip digest) is one tuple shared by
many messages until it changes. So the encodings of payloads and of their long
tuple or list fields are cached by object identity; a cached long sequence
stands in the payload's encoding as a 16-byte BLAKE2b of its own encoding,
which keeps the batches that are hashed small. Each cache holds a reference to
the objects it keys, so an id cannot be reused while cached, and it is cleared
when full; the encoding depends only on content, never on what happens to be
cached. Nested models are encoded inline (as the tuple of their field values,
which msgpack packs in C): looking them up costs about as much as encoding them.
Optionally the last few records are kept as text, to print the tail of a
failing run.
"""

from __future__ import annotations

import enum
import hashlib
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgpack
from pydantic import BaseModel

__all__ = ["TraceMode", "TraceRecorder", "canonical_payload"]

_CACHE_ENTRIES_MAX = 8192
_BATCH_RECORDS = 1024
# A tuple or list field at least this long is encoded once per object (and hashed):
# below it, the identity lookup costs about what encoding does.
_LONG_SEQUENCE_MIN = 16
# Sequences this long (a membership sync's whole table, which a node re-sends while
# its table is unchanged) get a cache of their own, so that the stream of short ones
# (gossip digests, one per node per round) does not push them out before they come
# again. It must not keep tables that changed alive, so every so many entries it
# drops those only it still holds (nothing can send those again).
_LARGE_SEQUENCE_MIN = 256
_LARGE_CACHE_ENTRIES_MAX = 4096
_LARGE_CACHE_SWEEP_EVERY = 128
_SEQUENCE_HASH_BYTES = 16


class TraceMode(enum.Enum):
    """How much of each delivery goes into the digest."""

    #: time, source, destination, kind and the payload's content.
    FULL = "full"
    #: time, source, destination and kind only: cheaper, still catches most divergence.
    HEADERS = "headers"


class _Encoder:
    """Canonical bytes of payloads, with the identity caches described in the module doc.

    Any mapping from content to bytes would do for a digest as long as it is
    deterministic and injective enough; this one is msgpack of field values,
    which msgpack packs in C except for models and unusual types.
    """

    __slots__ = ("_large", "_large_added", "_models", "_packer", "_sequences")

    def __init__(self) -> None:
        self._models: dict[int, tuple[BaseModel, bytes]] = {}
        self._sequences: dict[int, tuple[Sequence[Any], bytes]] = {}
        self._large: dict[int, tuple[Sequence[Any], bytes]] = {}
        self._large_added = 0
        self._packer = msgpack.Packer(use_bin_type=True, default=self._default)

    def model(self, model: BaseModel) -> bytes:
        """The canonical bytes of ``model`` (cached by identity)."""
        hit = self._models.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        fields = [
            self._sequence(value)
            if type(value) in (tuple, list) and len(value) >= _LONG_SEQUENCE_MIN
            else value
            for value in model.__dict__.values()
        ]
        extra = model.__pydantic_extra__
        if extra:
            fields.append(extra)
        encoded: bytes = self._packer.pack(fields)
        models = self._models
        if len(models) >= _CACHE_ENTRIES_MAX:
            models.clear()
        models[id(model)] = (model, encoded)
        return encoded

    def _sequence(self, sequence: Sequence[Any]) -> bytes:
        large = len(sequence) >= _LARGE_SEQUENCE_MIN
        cache = self._large if large else self._sequences
        hit = cache.get(id(sequence))
        if hit is not None and hit[0] is sequence:
            return hit[1]
        items: Sequence[Any] = sequence
        kind = type(sequence[0])
        if _plain_model(kind):
            # A long list of models (a membership sync): what ``_default`` would do
            # for each, in one comprehension instead of one call back per item.
            items = [
                tuple(item.__dict__.values()) if type(item) is kind else item for item in sequence
            ]
        encoded = hashlib.blake2b(
            self._packer.pack(items), digest_size=_SEQUENCE_HASH_BYTES
        ).digest()
        if large:
            self._large_added += 1
            if self._large_added % _LARGE_CACHE_SWEEP_EVERY == 0:
                _drop_unreferenced(cache)
        if len(cache) >= (_LARGE_CACHE_ENTRIES_MAX if large else _CACHE_ENTRIES_MAX):
            cache.clear()
        cache[id(sequence)] = (sequence, encoded)
        return encoded

    @staticmethod
    def _default(obj: Any) -> Any:
        # msgpack calls this for types it cannot pack; each answer must be deterministic.
        if isinstance(obj, BaseModel):
            extra = obj.__pydantic_extra__
            values = tuple(obj.__dict__.values())
            return (*values, extra) if extra else values
        if isinstance(obj, set | frozenset):
            return sorted(obj, key=repr)
        if isinstance(obj, enum.Enum):
            return obj.value
        return repr(obj)


def _drop_unreferenced(cache: dict[int, tuple[Sequence[Any], bytes]]) -> None:
    """Forget the entries whose sequence nothing but ``cache`` refers to any more."""
    # getrefcount counts its own argument: 2 means the cache entry is the only holder.
    unused = [key for key, entry in cache.items() if sys.getrefcount(entry[0]) <= 2]
    for key in unused:
        del cache[key]


_PLAIN_MODELS: dict[type[Any], bool] = {}


def _plain_model(kind: type[Any]) -> bool:
    """Whether instances of ``kind`` are models whose fields are all in ``__dict__``."""
    plain = _PLAIN_MODELS.get(kind)
    if plain is None:
        plain = issubclass(kind, BaseModel) and kind.model_config.get("extra") != "allow"
        _PLAIN_MODELS[kind] = plain
    return plain


def canonical_payload(payload: BaseModel) -> bytes:
    """Deterministic bytes for ``payload``'s content, as the trace records it.

    msgpack of its field values in field order; nested models are encoded the
    same way (inline), and a tuple or list field of 16 or more items as the
    16-byte BLAKE2b of its encoding.
    """
    return _shared_encoder.model(payload)


class TraceRecorder:
    """Accumulates the trace digest (and optionally the last ``keep`` records as text).

    Records are buffered as tuples and hashed as one msgpack array per
    ``_BATCH_RECORDS`` (far cheaper than one hash update each). Batch boundaries
    depend only on the record count, and ``hexdigest`` hashes the partial batch
    into a copy, so looking at the digest mid-run does not change later digests.
    """

    __slots__ = ("_encoder", "_full", "_hash", "_hashed", "_pending", "mode", "recent")

    def __init__(self, mode: TraceMode = TraceMode.FULL, keep: int = 0) -> None:
        self.mode = mode
        self._full = mode is TraceMode.FULL
        self._hashed = 0
        self.recent: deque[str] | None = deque(maxlen=keep) if keep > 0 else None
        self._hash = hashlib.blake2b(digest_size=32)
        self._pending: list[tuple[Any, ...]] = []
        self._encoder = _Encoder()

    @property
    def records(self) -> int:
        """How many records (payload deliveries, or messages in HEADERS mode, and faults)."""
        return self._hashed + len(self._pending)

    def delivery(
        self, time: float, src: int, dst: int, kind: str, payloads: Sequence[BaseModel]
    ) -> None:
        """Record one delivered message."""
        pending = self._pending
        if self._full:
            encode = self._encoder.model
            for payload in payloads:
                pending.append((time, src, dst, kind, encode(payload)))
        else:
            pending.append((time, src, dst, kind))
        if len(pending) >= _BATCH_RECORDS:
            self._flush()
        if self.recent is not None:
            self.recent.append(f"{time:.6f} n{src} -> n{dst} {kind} ({len(payloads)} payload(s))")

    def fault(self, time: float, text: str) -> None:
        """Record one applied fault (its script text)."""
        self._pending.append(("fault", time, text))
        if self.recent is not None:
            self.recent.append(f"{time:.6f} fault: {text}")

    def note(self, text: str) -> None:
        """Mix an arbitrary line into the digest (e.g. a scenario's client request)."""
        self._pending.append(("note", text))
        if self.recent is not None:
            self.recent.append(f"note: {text}")

    def hexdigest(self) -> str:
        """The digest so far, as hex (recording may continue afterwards)."""
        digest = self._hash.copy()
        if self._pending:
            digest.update(_packer.pack(self._pending))
        return digest.hexdigest()

    def _flush(self) -> None:
        self._hashed += len(self._pending)
        self._hash.update(_packer.pack(self._pending))
        self._pending.clear()


# Packs the record batches: plain tuples of numbers, strings and bytes only.
_packer = msgpack.Packer(use_bin_type=True)
_shared_encoder = _Encoder()
