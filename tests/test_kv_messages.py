"""KV payloads in columns: what a voter accepts, and how a batch is split into payloads."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mesh.kv_messages import (
    WRITES_PER_PAYLOAD_MAX,
    KVAnswer,
    KVCall,
    KVWrites,
    KVWritten,
    PendingWrite,
    ok_answer,
    write_call,
    writes_payloads,
    written_payloads,
)


def test_writes_whose_columns_differ_in_length_are_refused() -> None:
    with pytest.raises(ValidationError, match="2 call ids, 1 client ids, 1 seqs, 1 commands"):
        KVWrites.model_validate({"call_ids": [1, 2], "client_ids": ["c/0"], "seqs": [1],
                                 "commands": [b"\x91\x09"]})
    with pytest.raises(ValidationError, match="1 call ids, 0 responses"):
        KVWritten.model_validate({"call_ids": [1], "responses": []})


def test_columns_are_bounded_and_checked_item_by_item() -> None:
    too_many = list(range(WRITES_PER_PAYLOAD_MAX + 1))
    with pytest.raises(ValidationError, match="call_ids"):
        KVWritten.model_validate({"call_ids": too_many, "responses": [b""] * len(too_many)})
    with pytest.raises(ValidationError, match="seqs"):
        KVWrites.model_validate({"call_ids": [1], "client_ids": ["c/0"], "seqs": [-1],
                                 "commands": [b"x"]})
    with pytest.raises(ValidationError, match="responses"):
        KVWritten.model_validate({"call_ids": [1], "responses": [b"x" * (64 * 1024 + 1)]})


def test_payloads_built_without_validation_equal_the_validated_ones() -> None:
    pending = PendingWrite(7, "c/0", 3, b"\x93\x01")
    call = write_call(7, "c/0", 3, b"\x93\x01")
    assert call == KVCall(call_id=7, client_id="c/0", seq=3, command=b"\x93\x01")
    assert pending.as_call() == call
    answer = ok_answer(7, b"\x92\x00")
    assert answer == KVAnswer(call_id=7, status="ok", response=b"\x92\x00")
    writes = writes_payloads([pending], 1024)
    assert writes == [KVWrites.model_validate(writes[0].model_dump())]
    written = written_payloads([7], [b"\x92\x00"], 1024)
    assert written == [KVWritten.model_validate(written[0].model_dump())]


@given(sizes=st.lists(st.integers(0, 300), max_size=50), budget=st.integers(1, 1000))
def test_a_batch_splits_in_order_within_the_budget_unless_one_write_exceeds_it(
    sizes: list[int], budget: int,
) -> None:
    calls = [PendingWrite(i, f"c/{i % 3}", i + 1, b"x" * size) for i, size in enumerate(sizes)]
    payloads = writes_payloads(calls, budget)
    assert [i for p in payloads for i in p.call_ids] == list(range(len(sizes)))
    assert [c for p in payloads for c in p.commands] == [c.command for c in calls]
    for payload in payloads:
        assert len(payload.commands) >= 1 or len(payloads) == 1
        total = sum(len(c) for c in payload.commands)
        assert total <= budget or len(payload.commands) == 1
    # Greedy: a payload ends only where the next write would not fit.
    for first, second in itertools.pairwise(payloads):
        assert sum(len(c) for c in first.commands) + len(second.commands[0]) > budget
    answers = written_payloads(list(range(len(sizes))), [b"r" * s for s in sizes], budget)
    assert [len(p.call_ids) for p in answers] == [len(p.call_ids) for p in payloads]


def test_a_batch_of_more_writes_than_one_payload_holds_is_split_by_count() -> None:
    count = WRITES_PER_PAYLOAD_MAX * 2 + 1
    calls = [PendingWrite(i, "c/0", i + 1, b"") for i in range(count)]
    payloads = writes_payloads(calls, 1 << 20)
    assert [len(p.call_ids) for p in payloads] == [WRITES_PER_PAYLOAD_MAX,
                                                   WRITES_PER_PAYLOAD_MAX, 1]
