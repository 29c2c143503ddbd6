"""Batch entries of the KV store: several key writes in one log entry.

A batch must apply exactly as its requests would, each in an entry of its own
(retries, stale sessions, refusals and garbage included), but for the index they
share. Commands whose ids come from the index may not share an entry, and an
item that is not a request is answered on its own without stopping the others.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.kvstore import (
    CommandError,
    CompareAndSet,
    CompareAndSetWithWrites,
    Delete,
    ErrorCode,
    KVSettings,
    KVStore,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    Put,
    Request,
    Response,
    Tick,
    decode_entry,
    decode_request,
    encode_entry,
    encode_request,
    may_share_entry,
)
from consensus.kvstore.commands import (
    BATCH_FORMAT,
    decode_command,
    encode_command,
    encode_plain_put,
    entry_from_items,
    item_may_share_entry,
    request_item,
)
from consensus.kvstore.snapshot import decode_snapshot

SMALL = KVSettings(keys_max=4, value_bytes_max=4, sessions_max=3, session_window=3)

KEYS = st.sampled_from(["a", "ab", "b", "ü", "a/x"])
VALUES = st.binary(max_size=6)  # value_bytes_max 4: some are too large
# Entry k of a run is at index 1000 * k + (its size - 1) in both stores (below), so
# a lease granted by entry k is lease 1000 * k in both; some of these never exist.
LEASE_IDS = st.none() | st.sampled_from([1000 * k for k in range(1, 8)])
KEY_WRITES = st.one_of(
    st.builds(Put, KEYS, VALUES, LEASE_IDS),
    st.builds(Delete, KEYS),
    st.builds(CompareAndSet, KEYS, st.none() | VALUES, st.integers(0, 3), LEASE_IDS),
    st.builds(CompareAndSetWithWrites, st.just("w"), st.none() | VALUES, st.integers(0, 3),
              LEASE_IDS, st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=2,
                                  unique_by=lambda write: write[0]).map(tuple)),
)
# Commands that stay alone in an entry; short leases, so that some expire.
ALONE = st.one_of(
    st.builds(LeaseGrant, st.integers(5, 60)),
    st.builds(LeaseKeepAlive, LEASE_IDS.filter(lambda lease: lease is not None)),
    st.builds(LeaseRevoke, LEASE_IDS.filter(lambda lease: lease is not None)),
    st.just(Tick()),
)
# Items a batch may hold that are no request; none of them is a batch by itself.
JUNK = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=3), st.just([1, "c1"]),
                 st.just([1, "c1", -1, 0, [1, "k", b"v", None]]), st.just([]))


def _wire(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@st.composite
def grouped_items(draw: st.DrawFn) -> list[list[Any]]:
    """Entries' items (request wires, retries, junk), an entry's as one group: key
    writes in groups of any size, lease commands alone."""
    groups: list[list[Any]] = []
    sent: list[Any] = []
    seqs: dict[str, int] = {}
    now = 0

    def request(command: Any) -> Any:
        nonlocal now
        now = max(0, now + draw(st.integers(-5, 30)))  # leaders' clocks may step back
        client = draw(st.sampled_from(["", "c1", "c2", "c3", "c4"]))
        seq = 0
        if client:
            seq = max(1, seqs.get(client, 0) + draw(st.integers(-3, 2)))
            seqs[client] = max(seqs.get(client, 0), seq)
        return _wire(encode_request(Request(client, seq, now, command)))

    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 3)) == 0:
            groups.append([request(draw(ALONE))])
            continue
        group: list[Any] = []
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["new", "new", "new", "retry", "junk"]))
            if kind == "retry" and sent:
                group.append(sent[draw(st.integers(0, len(sent) - 1))])
            elif kind == "junk":
                group.append(draw(JUNK))
            else:
                group.append(request(draw(KEY_WRITES)))
                sent.append(group[-1])
        groups.append(group)
    return groups


def _as_entry(group: list[Any]) -> bytes:
    return _pack(group[0]) if len(group) == 1 else _pack([BATCH_FORMAT, group])


def _without_index(response: Response) -> Response:
    return response._replace(index=0)


def _state(store: KVStore) -> Any:
    """What applying decides: keys, values, versions, leases and sessions (not the
    log positions of the writes)."""
    state = decode_snapshot(store.snapshot())
    items = sorted((item.key, item.value, item.version, item.lease) for item in state.items)
    sessions = {client: [(seq, _without_index(response)) for seq, response in responses]
                for client, responses in state.sessions}
    return items, state.leases, sessions, state.now_ms


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grouped_items())
def test_a_batch_applies_as_its_requests_would_one_entry_each(groups: list[list[Any]]) -> None:
    # Also the differential test of the store's shortcut for a batch's plain puts
    # against its checked path, which single-request entries take.
    one_each, batched = KVStore(SMALL), KVStore(SMALL)
    alone: list[Response] = []
    together: list[Response] = []
    for number, group in enumerate(groups, start=1):
        for position, item in enumerate(group):
            alone.append(one_each.apply(1000 * number + position, _pack(item)))
        responses = batched.apply_entry(1000 * number + len(group) - 1, _as_entry(group))
        assert len(responses) == len(group)
        together.extend(responses)
    assert [_without_index(r) for r in together] == [_without_index(r) for r in alone]
    assert _state(batched) == _state(one_each)


def test_an_entry_of_one_request_is_that_request() -> None:
    request = Request("c1", 1, 5, Put("k", b"v"))
    assert encode_entry([request]) == encode_request(request)
    assert decode_entry(encode_entry([request])) == [request]


def test_a_batch_round_trips_and_answers_each_request_at_its_entry() -> None:
    requests = [Request("c1", 1, 5, Put("k", b"v")), Request("c1", 2, 5, Put("k", b"w")),
                Request("c2", 1, 6, Delete("k")), Request("c2", 1, 6, Delete("k"))]
    data = encode_entry(requests)
    assert decode_entry(data) == requests
    store = KVStore()
    responses = store.apply_entry(7, data)
    assert [(r.index, r.error, r.version, r.previous) for r in responses] == [
        (7, None, 1, 0), (7, None, 2, 1), (7, None, 0, 2),
        (7, None, 0, 2)]  # the retry is answered with the stored response, not applied
    assert store.get("k") is None and store.applied_index == 7
    # apply gives an entry's last response
    assert KVStore().apply(7, data) == responses[-1]


@pytest.mark.parametrize("command", [LeaseGrant(1000), LockAcquire("L", "o", 1000), Tick()])
def test_commands_whose_ids_come_from_the_index_stay_alone(command: Any) -> None:
    assert not may_share_entry(command)
    alone = Request("c1", 2, 5, command)
    with pytest.raises(ValueError, match="may not share an entry"):
        encode_entry([Request("c1", 1, 5, Put("k", b"v")), alone])
    # A batch that holds one anyway (another leader's, or a hostile one) refuses it
    # and applies the rest.
    data = _pack([BATCH_FORMAT, [_wire(encode_request(Request("c1", 1, 5, Put("k", b"v")))),
                                 _wire(encode_request(alone))]])
    decoded = decode_entry(data)
    assert isinstance(decoded[1], CommandError)
    store = KVStore()
    first, second = store.apply_entry(1, data)
    assert first.ok and store.get("k") is not None
    assert second.error is ErrorCode.INVALID_REQUEST and "may not share" in second.detail
    assert store.lease_count == 0 and store.lock("L") is None


def test_junk_in_a_batch_is_refused_on_its_own_and_the_rest_applies() -> None:
    good = _wire(encode_request(Request("c1", 1, 5, Put("k", b"v"))))
    data = _pack([BATCH_FORMAT, ["junk", good, [1, "c1"]]])
    responses = KVStore().apply_entry(3, data)
    assert [r.error for r in responses] == [ErrorCode.INVALID_REQUEST, None,
                                           ErrorCode.INVALID_REQUEST]
    assert "request" in responses[0].detail


@pytest.mark.parametrize("data", [
    _pack([BATCH_FORMAT, []]),
    _pack([BATCH_FORMAT, [[1, "c1", 1, 0, [1, "k", b"v", None]]]]),  # one: not a batch
    _pack([BATCH_FORMAT, "requests"]),
    _pack([BATCH_FORMAT]),
    b"\xc1",
])
def test_an_entry_that_is_neither_request_nor_batch_is_one_refusal(data: bytes) -> None:
    store = KVStore()
    responses = store.apply_entry(4, data)
    assert len(responses) == 1 and responses[0].error is ErrorCode.INVALID_REQUEST
    assert store.applied_index == 4 and len(store) == 0
    with pytest.raises(CommandError):
        decode_request(data)


def test_encode_entry_needs_a_request() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_entry([])


ANY_COMMAND = st.one_of(KEY_WRITES, ALONE, st.builds(LockAcquire, st.just("L"), st.just("o"),
                                                     st.integers(1, 50)))


@settings(max_examples=300, deadline=None)
@given(ANY_COMMAND, st.sampled_from(["", "c1", "ü/1"]), st.integers(-1, 3),
       st.integers(-1, 10**6))
def test_a_leaders_request_item_is_the_requests_list_form(
    command: Any, client_id: str, seq: int, now_ms: int,
) -> None:
    try:
        request = Request(client_id, seq, now_ms, command)
    except CommandError:
        with pytest.raises(CommandError):
            request_item(client_id, seq, now_ms, encode_command(command))
        return
    item = request_item(client_id, seq, now_ms, encode_command(command))
    assert _pack(item) == encode_request(request)
    assert item_may_share_entry(item) == may_share_entry(command)


@given(st.binary(max_size=12) | st.sampled_from([_pack([1, "k", "not bytes", None]),
                                                 _pack([1, "", b"v", None]),
                                                 _pack([99, "k"])]))
def test_a_leaders_request_item_refuses_what_decode_command_refuses(data: bytes) -> None:
    try:
        command = decode_command(data)
    except CommandError:
        with pytest.raises(CommandError):
            request_item("c1", 1, 5, data)
        return
    item = request_item("c1", 1, 5, data)
    assert _pack(item) == encode_request(Request("c1", 1, 5, command))


@given(st.text(st.characters(codec="ascii"), min_size=1, max_size=8), st.binary(max_size=8))
def test_a_plain_put_encodes_as_its_put(key: str, value: bytes) -> None:
    assert encode_plain_put(key, value) == encode_command(Put(key, value))


def test_entries_from_items_are_entries_from_requests() -> None:
    requests = [Request("c1", 1, 5, Put("k", b"v")), Request("c2", 1, 6, Delete("k"))]
    items = [_wire(encode_request(request)) for request in requests]
    assert entry_from_items(items) == encode_entry(requests)
    assert entry_from_items(items[:1]) == encode_entry(requests[:1])
    assert not item_may_share_entry(_wire(encode_request(Request("c1", 2, 5, Tick()))))
