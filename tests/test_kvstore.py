"""The replicated KV state machine (consensus.kvstore), driven by hand.

Tests feed a ``KVStore`` encoded requests at increasing indexes, the way Raft feeds
committed entries, and look at responses, reads and snapshots. A small ``Feed``
keeps the index, the stamped time and each client's next sequence number.
Property tests draw random request sequences (retries, out-of-order sequence
numbers, time going back, garbage entries, tight limits) and check determinism,
snapshot round trips and store invariants after every entry.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.kvstore import (
    Command,
    CommandError,
    CompareAndSet,
    CompareAndSetWithWrites,
    Delete,
    ErrorCode,
    Item,
    KVSettings,
    KVStore,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Put,
    Request,
    Response,
    SnapshotError,
    Tick,
    decode_command,
    decode_request,
    decode_response,
    encode_command,
    encode_request,
    encode_response,
)
from consensus.kvstore.commands import (
    REQUEST_FORMAT,
    command_from_wire,
    plain_put_fields,
    request_from_wire,
    request_item,
)
from consensus.kvstore.responses import response_from_wire, response_to_wire
from consensus.kvstore.settings import INT_MAX
from consensus.kvstore.snapshot import decode_snapshot

# ------------------------------------------------------------------ harness


@dataclass
class Feed:
    """Applies requests to one store as Raft would: increasing index, stamped time."""

    store: KVStore = field(default_factory=KVStore)
    index: int = 0
    now_ms: int = 1000
    seqs: dict[str, int] = field(default_factory=dict)

    def entry(self, command: Command, client: str = "c1", seq: int | None = None) -> bytes:
        """Request bytes for ``command`` from ``client`` with its next seq (or ``seq``)."""
        if seq is None:
            seq = self.seqs.get(client, 0) + 1 if client else 0
        if client:
            self.seqs[client] = max(self.seqs.get(client, 0), seq)
        return encode_request(Request(client, seq, self.now_ms, command))

    def apply_bytes(self, data: bytes) -> Response:
        self.index += 1
        return self.store.apply(self.index, data)

    def do(self, command: Command, client: str = "c1", seq: int | None = None) -> Response:
        return self.apply_bytes(self.entry(command, client, seq))

    def at(self, now_ms: int) -> Feed:
        self.now_ms = now_ms
        return self


def state_without_progress(store: KVStore) -> Any:
    """The snapshot state minus the log position and time, which every entry moves.

    Sessions are compared as a set: a retry marks its client's session as recently
    used (that order decides evictions), and that is all it may change.
    """
    state = decode_snapshot(store.snapshot())
    return replace(state, applied_index=0, now_ms=0, sessions=()), frozenset(state.sessions)


# ------------------------------------------------------------------ keys and versions


def test_put_get_versions_and_indexes() -> None:
    feed = Feed()
    first = feed.do(Put("k", b"one"))
    assert first.ok and first.error is None
    assert (first.version, first.previous, first.index) == (1, 0, 1)
    second = feed.do(Put("k", b"two"))
    assert (second.version, second.previous) == (2, 1)
    assert feed.store.get("k") == Item("k", b"two", 2, 1, 2, None)
    assert feed.store.get("missing") is None
    assert len(feed.store) == 1 and feed.store.applied_index == 2


def test_delete_then_recreate_starts_at_version_one_with_larger_indexes() -> None:
    feed = Feed()
    feed.do(Put("k", b"a"))
    feed.do(Put("k", b"b"))
    deleted = feed.do(Delete("k"))
    assert deleted.ok and deleted.previous == 2
    assert feed.store.get("k") is None
    again = feed.do(Delete("k"))
    assert again.error is ErrorCode.NOT_FOUND
    recreated = feed.do(Put("k", b"c"))
    assert (recreated.version, recreated.previous) == (1, 0)
    item = feed.store.get("k")
    assert item is not None and item.version == 1
    assert item.create_index == item.mod_index == 5  # later than anything of its first life


def test_compare_and_set_semantics() -> None:
    feed = Feed()
    created = feed.do(CompareAndSet("k", b"v1", 0))  # 0 = create only if absent
    assert created.ok and created.version == 1
    exists = feed.do(CompareAndSet("k", b"x", 0))
    assert exists.error is ErrorCode.CAS_FAILED and exists.version == 1
    updated = feed.do(CompareAndSet("k", b"v2", 1))
    assert updated.ok and (updated.version, updated.previous) == (2, 1)
    wrong = feed.do(CompareAndSet("k", None, 1))
    assert wrong.error is ErrorCode.CAS_FAILED and wrong.version == 2
    removed = feed.do(CompareAndSet("k", None, 2))
    assert removed.ok and (removed.version, removed.previous) == (0, 2)
    assert feed.store.get("k") is None
    absent = feed.do(CompareAndSet("k", b"x", 2))
    assert absent.error is ErrorCode.CAS_FAILED and absent.version == 0
    noop = feed.do(CompareAndSet("k", None, 0))  # delete-if-absent of an absent key
    assert noop.ok and feed.store.get("k") is None


def test_compare_and_set_with_writes_applies_all_or_nothing() -> None:
    feed = Feed(KVStore(KVSettings(keys_max=4, value_bytes_max=8)))
    feed.do(Put("gone", b"x"))
    created = feed.do(CompareAndSetWithWrites(
        "task", b"rec", 0, None, (("index/task", b""), ("gone", None), ("absent", None))))
    assert created.ok and created.version == 1
    assert feed.store.get("index/task") is not None and feed.store.get("gone") is None
    # The compare fails: nothing is written, the answer says the current version.
    stale = feed.do(CompareAndSetWithWrites("task", b"new", 0, None, (("index/task", None),)))
    assert stale.error is ErrorCode.CAS_FAILED and stale.version == 1
    assert feed.store.get("index/task") is not None
    # One side write refused (too large): nothing at all is written.
    refused = feed.do(CompareAndSetWithWrites("task", b"rec2", 1, None,
                                              (("other", b"123456789"),)))
    assert refused.error is ErrorCode.TOO_LARGE
    item = feed.store.get("task")
    assert item is not None and item.value == b"rec"
    # New keys beyond keys_max: refused as a whole too (task, index/task, a, b = 4).
    full = feed.do(CompareAndSetWithWrites("task", b"rec2", 1, None,
                                           (("a", b""), ("b", b""), ("c", b""))))
    assert full.error is ErrorCode.TOO_LARGE and feed.store.get("a") is None
    done = feed.do(CompareAndSetWithWrites("task", b"done", 1, None, (("index/task", None),)))
    assert done.ok and done.version == 2 and feed.store.get("index/task") is None


def test_compare_and_set_with_writes_validates_and_round_trips() -> None:
    command = CompareAndSetWithWrites("k", None, 3, 7, (("a", b"1"), ("b", None)))
    assert decode_command(encode_command(command)) == command
    with pytest.raises(CommandError, match="twice"):
        CompareAndSetWithWrites("k", b"", 0, None, (("a", None), ("a", b"")))
    with pytest.raises(CommandError, match="twice"):
        CompareAndSetWithWrites("k", b"", 0, None, (("k", None),))
    with pytest.raises(CommandError, match="more than"):
        CompareAndSetWithWrites("k", b"", 0, None, tuple((f"k{i}", None) for i in range(9)))
    with pytest.raises(CommandError, match="writes"):
        CompareAndSetWithWrites("k", b"", 0, None, (("a",),))  # type: ignore[arg-type]


def test_cas_race_first_wins_second_gets_current_version() -> None:
    feed = Feed()
    feed.do(Put("k", b"base"))
    a = feed.entry(CompareAndSet("k", b"from-a", 1), client="a")
    b = feed.entry(CompareAndSet("k", b"from-b", 1), client="b")
    first, second = feed.apply_bytes(a), feed.apply_bytes(b)
    assert first.ok and first.version == 2
    assert second.error is ErrorCode.CAS_FAILED and second.version == 2
    item = feed.store.get("k")
    assert item is not None and item.value == b"from-a"


def test_range_by_prefix_limit_and_paging() -> None:
    feed = Feed()
    for key in ["b", "a/2", "a/1", "a", "a/3", "ab", "é/x", "a/1/z"]:
        feed.do(Put(key, key.encode()))
    store = feed.store
    assert [i.key for i in store.range("a/")] == ["a/1", "a/1/z", "a/2", "a/3"]
    assert [i.key for i in store.range("a/", limit=2)] == ["a/1", "a/1/z"]
    assert [i.key for i in store.range("a/", 2, start_after="a/1/z")] == ["a/2", "a/3"]
    assert [i.key for i in store.range("a/", start_after="a")] == ["a/1", "a/1/z", "a/2", "a/3"]
    assert [i.key for i in store.range("")] == sorted(
        ["b", "a/2", "a/1", "a", "a/3", "ab", "é/x", "a/1/z"]
    )
    assert [i.key for i in store.range("é")] == ["é/x"]
    assert store.range("zzz") == []
    with pytest.raises(ValueError, match="limit"):
        store.range("a", limit=0)


# ------------------------------------------------------------------ leases


def test_leases_expire_by_stamped_time_and_take_their_keys() -> None:
    feed = Feed().at(1000)
    grant = feed.do(LeaseGrant(500))
    lease_id = grant.lease_id
    assert grant.ok and lease_id == 1 and grant.deadline_ms == 1500
    assert feed.do(Put("eph", b"x", lease_id)).ok
    assert feed.do(Put("keep", b"y")).ok
    lease = feed.store.lease(lease_id)
    assert lease is not None and lease.keys == ("eph",) and lease.lock is None
    feed.at(1499).do(Tick(), client="")
    assert feed.store.get("eph") is not None  # a millisecond before the deadline
    feed.at(1500).do(Tick(), client="")
    assert feed.store.get("eph") is None and feed.store.lease(lease_id) is None
    assert feed.store.get("keep") is not None
    late = feed.do(Put("eph", b"x", lease_id))
    assert late.error is ErrorCode.LEASE_NOT_FOUND and late.lease_id == lease_id


def test_expiry_happens_before_the_command_that_carries_the_time() -> None:
    feed = Feed().at(0)
    lease_id = feed.do(LeaseGrant(10)).lease_id
    assert lease_id is not None
    feed.do(Put("k", b"v", lease_id))
    # This keep-alive is stamped after the deadline: the lease is already gone.
    assert feed.at(10).do(LeaseKeepAlive(lease_id)).error is ErrorCode.LEASE_NOT_FOUND
    assert feed.store.get("k") is None


def test_keep_alive_extends_and_stamped_time_never_goes_back() -> None:
    feed = Feed().at(0)
    lease_id = feed.do(LeaseGrant(100)).lease_id
    assert lease_id is not None
    kept = feed.at(90).do(LeaseKeepAlive(lease_id))
    assert kept.ok and kept.deadline_ms == 190
    feed.at(150).do(Tick(), client="")
    assert feed.store.lease(lease_id) is not None
    feed.at(195).do(Tick(), client="")
    assert feed.store.lease(lease_id) is None and feed.store.now_ms == 195
    # A leader with a clock behind does not move time back: leases granted now
    # run from the store's time.
    regrant = feed.at(50).do(LeaseGrant(100))
    assert feed.store.now_ms == 195 and regrant.deadline_ms == 295


def test_revoke_deletes_attached_keys_and_put_detaches() -> None:
    feed = Feed()
    lease_id = feed.do(LeaseGrant(10_000)).lease_id
    assert lease_id is not None
    for key in ["a", "b", "c"]:
        feed.do(Put(key, b"v", lease_id))
    feed.do(Put("c", b"free"))  # a write without a lease detaches the key
    cas = feed.do(CompareAndSet("b", b"w", 1, lease_id))
    assert cas.ok and cas.lease_id == lease_id
    lease = feed.store.lease(lease_id)
    assert lease is not None and lease.keys == ("a", "b")
    revoked = feed.do(LeaseRevoke(lease_id))
    assert revoked.ok and revoked.deleted == 2
    assert [i.key for i in feed.store.range("")] == ["c"]
    assert feed.do(LeaseRevoke(lease_id)).error is ErrorCode.LEASE_NOT_FOUND
    assert feed.do(LeaseKeepAlive(lease_id)).error is ErrorCode.LEASE_NOT_FOUND
    assert feed.do(LeaseRevoke(999)).error is ErrorCode.LEASE_NOT_FOUND


def test_moving_a_key_between_leases() -> None:
    feed = Feed()
    first, second = feed.do(LeaseGrant(100)).lease_id, feed.do(LeaseGrant(100)).lease_id
    assert first is not None and second is not None
    feed.do(Put("k", b"v", first))
    feed.do(Put("k", b"v", second))
    assert feed.store.lease(first).keys == ()  # type: ignore[union-attr]
    assert feed.do(LeaseRevoke(first)).deleted == 0
    assert feed.store.get("k") is not None
    assert feed.do(LeaseRevoke(second)).deleted == 1
    assert feed.store.get("k") is None


# ------------------------------------------------------------------ locks


def test_lock_acquire_contend_release() -> None:
    feed = Feed().at(0)
    got = feed.do(LockAcquire("L", "alice", 1000))
    assert got.ok and got.token == 1 and got.lease_id == 1 and got.deadline_ms == 1000
    assert got.holder == "alice"
    lock = feed.store.lock("L")
    assert lock is not None and (lock.owner, lock.token, lock.deadline_ms) == ("alice", 1, 1000)
    lease = feed.store.lease(1)
    assert lease is not None and lease.lock == "L"
    held = feed.do(LockAcquire("L", "bob", 1000), client="c2")
    assert held.error is ErrorCode.LOCK_HELD
    assert (held.holder, held.token, held.lease_id, held.deadline_ms) == ("alice", 1, 1, 1000)
    again = feed.at(100).do(LockAcquire("L", "alice", 2000))  # the holder renews
    assert again.ok and again.token == 1 and again.deadline_ms == 2100
    bad = feed.do(LockRelease("L", "bob", 1), client="c2")
    assert bad.error is ErrorCode.NOT_OWNER and (bad.holder, bad.token) == ("alice", 1)
    assert feed.do(LockRelease("L", "alice", 99)).error is ErrorCode.NOT_OWNER
    released = feed.do(LockRelease("L", "alice", 1))
    assert released.ok and feed.store.lock("L") is None and feed.store.lease(1) is None
    assert feed.do(LockRelease("L", "alice", 1)).error is ErrorCode.NOT_FOUND
    after = feed.do(LockAcquire("L", "bob", 1000), client="c2")
    assert after.ok and after.token is not None and after.token > 1


def test_lock_expiry_hands_over_with_larger_token_and_fences_old_holder() -> None:
    feed = Feed().at(0)
    old = feed.do(LockAcquire("L", "alice", 100))
    assert old.token is not None
    feed.do(Put("L/owner-data", b"x", old.lease_id))  # state that dies with the lock
    feed.at(100).do(Tick(), client="")
    assert feed.store.lock("L") is None and feed.store.get("L/owner-data") is None
    new = feed.do(LockAcquire("L", "bob", 100), client="c2")
    assert new.ok and new.token is not None and new.token > old.token
    stale = feed.do(LockRelease("L", "alice", old.token))
    assert stale.error is ErrorCode.NOT_OWNER and (stale.holder, stale.token) == ("bob", new.token)
    assert feed.store.lock("L") is not None


def test_revoking_a_lock_lease_releases_the_lock() -> None:
    feed = Feed()
    got = feed.do(LockAcquire("L", "alice", 1000))
    assert got.lease_id is not None
    assert feed.do(LeaseKeepAlive(got.lease_id)).ok
    assert feed.do(LeaseRevoke(got.lease_id)).ok
    assert feed.store.lock("L") is None
    assert feed.do(LockAcquire("L", "bob", 1000), client="c2").ok


# ------------------------------------------------------------------ limits


def small_settings(**overrides: int) -> KVSettings:
    base = dict(
        keys_max=2,
        key_bytes_max=4,
        value_bytes_max=3,
        sessions_max=2,
        session_window=2,
        leases_max=2,
        locks_max=1,
        lease_ttl_ms_max=1000,
    )
    base.update(overrides)
    return KVSettings(**base)


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        (Put("toolong", b"v"), "key is 7 bytes; key_bytes_max is 4"),
        (Put("éé€", b"v"), "key is 7 bytes"),  # UTF-8 bytes, not characters
        (Put("k", b"four"), "value is 4 bytes; value_bytes_max is 3"),
        (CompareAndSet("k", b"four", 0), "value_bytes_max"),
        (LeaseGrant(1001), "lease_ttl_ms_max is 1000"),
        (LockAcquire("toolong", "o", 10), "lock name"),
        (LockAcquire("L", "toolong", 10), "owner"),
        (LockAcquire("L", "o", 5000), "lease_ttl_ms_max"),
    ],
)
def test_size_limits_answer_too_large_and_change_nothing(command: Command, fragment: str) -> None:
    feed = Feed(KVStore(small_settings()))
    before = state_without_progress(feed.store)
    response = feed.do(command, client="")
    assert response.error is ErrorCode.TOO_LARGE and fragment in response.detail
    assert state_without_progress(feed.store) == before


def test_puts_at_each_limit_are_applied_and_one_past_it_refused() -> None:
    feed = Feed(KVStore(small_settings()))
    assert feed.do(Put("four", b"thr")).ok  # key_bytes_max and value_bytes_max exactly
    assert feed.do(Put("é€", b"v")).error is ErrorCode.TOO_LARGE  # 5 bytes in 2 characters
    assert feed.do(Put("éa", b"v")).ok  # 3 bytes
    assert feed.do(Put("four", b"four")).error is ErrorCode.TOO_LARGE
    assert feed.do(Put("fives", b"v")).error is ErrorCode.TOO_LARGE
    assert feed.do(Put("new", b"v")).error is ErrorCode.TOO_LARGE  # keys_max reached
    assert feed.do(Put("four", b"v", 7)).error is ErrorCode.LEASE_NOT_FOUND
    item = feed.store.get("four")
    assert item is not None and item.value == b"thr" and item.version == 1


def test_count_limits() -> None:
    feed = Feed(KVStore(small_settings()))
    assert feed.do(Put("a", b"1")).ok and feed.do(Put("b", b"1")).ok
    full = feed.do(Put("c", b"1"))
    assert full.error is ErrorCode.TOO_LARGE and "keys_max (2)" in full.detail
    assert feed.do(CompareAndSet("c", b"1", 0)).error is ErrorCode.TOO_LARGE
    assert feed.do(Put("a", b"2")).ok  # overwriting needs no room
    assert feed.do(LockAcquire("L", "o", 10)).ok
    assert "locks_max" in feed.do(LockAcquire("M", "o", 10)).detail
    assert feed.do(LeaseGrant(10)).ok
    assert "leases_max" in feed.do(LeaseGrant(10)).detail
    long_client = feed.do(Tick(), client="client-id-too-long")
    assert long_client.error is ErrorCode.TOO_LARGE and "client_id" in long_client.detail


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match=r"keys_max \(0\) must be an integer from 1"):
        KVSettings(keys_max=0)
    with pytest.raises(ValueError, match="session_window"):
        KVSettings(session_window=True)


# ------------------------------------------------------------------ sessions and dedup


def test_retry_of_the_same_bytes_returns_the_stored_response_and_changes_nothing() -> None:
    feed = Feed()
    put = feed.entry(Put("k", b"v"))
    first = feed.apply_bytes(put)
    feed.do(Put("other", b"x"), client="c2")
    before = state_without_progress(feed.store)
    for _ in range(3):
        assert feed.apply_bytes(put) == first  # identical, including the first index
    assert state_without_progress(feed.store) == before
    item = feed.store.get("k")
    assert item is not None and item.version == 1
    # A refusal is stored too: the retry does not turn it into a success.
    cas = feed.entry(CompareAndSet("new", b"v", 5))
    refused = feed.apply_bytes(cas)
    feed.do(Put("new", b"v"), client="c2")
    assert feed.apply_bytes(cas) == refused


def test_out_of_order_within_window_stale_below_it() -> None:
    feed = Feed(KVStore(KVSettings(session_window=3)))
    feed.do(Put("s1", b""), seq=1)
    feed.do(Put("s4", b""), seq=4)  # 2 and 3 still on their way
    assert feed.do(Put("s3", b""), seq=3).ok
    assert feed.do(Put("s2", b""), seq=2).ok  # window {2,3,4}: 1 dropped
    assert [i.key for i in feed.store.range("s")] == ["s1", "s2", "s3", "s4"]
    stale = feed.do(Put("s1", b"again"), seq=1)
    assert stale.error is ErrorCode.STALE_REQUEST and "oldest kept response (2)" in stale.detail
    item = feed.store.get("s1")
    assert item is not None and item.version == 1
    feed.do(Put("s5", b""), seq=5)
    assert feed.do(Put("s2", b"again"), seq=2).error is ErrorCode.STALE_REQUEST
    assert feed.do(Put("s3", b"again"), seq=3).index == 3  # kept: the stored answer


def test_unknown_client_must_start_at_seq_one() -> None:
    feed = Feed()
    refused = feed.do(Put("k", b"v"), client="new", seq=2)
    assert refused.error is ErrorCode.SESSION_EXPIRED and feed.store.get("k") is None
    assert feed.do(Put("k", b"v"), client="new", seq=1).ok
    assert feed.do(Put("k", b"w"), client="new", seq=2).ok


def test_sessions_are_evicted_least_recently_used_by_apply_order() -> None:
    feed = Feed(KVStore(KVSettings(sessions_max=2)))
    a1 = feed.entry(Put("a", b"1"), client="a")
    feed.apply_bytes(a1)
    feed.do(Put("b", b"1"), client="b")
    feed.apply_bytes(a1)  # a retry counts as use: "b" is now least recently used
    feed.do(Put("c", b"1"), client="c")  # evicts "b"
    assert feed.do(Put("b", b"2"), client="b").error is ErrorCode.SESSION_EXPIRED
    assert feed.do(Put("a", b"2"), client="a").ok
    clients = [client for client, _ in decode_snapshot(feed.store.snapshot()).sessions]
    assert clients == ["c", "a"]


def test_sessionless_requests_apply_every_time() -> None:
    feed = Feed()
    put = feed.entry(Put("k", b"v"), client="")
    assert feed.apply_bytes(put).version == 1
    assert feed.apply_bytes(put).version == 2
    assert decode_snapshot(feed.store.snapshot()).sessions == ()


# ------------------------------------------------------------------ bytes


ALL_COMMANDS: list[Command] = [
    Put("k", b"v"),
    Put("ключ", b"\x00\xff", 7),
    Delete("k"),
    CompareAndSet("k", None, 0),
    CompareAndSet("k", b"v", 3, 9),
    LeaseGrant(1),
    LeaseKeepAlive(2),
    LeaseRevoke(3),
    LockAcquire("L", "o", 10),
    LockRelease("L", "o", 5),
    Tick(),
]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: type(c).__name__)
def test_commands_and_requests_round_trip(command: Command) -> None:
    assert decode_command(encode_command(command)) == command
    request = Request("client", 3, 12345, command)
    data = encode_request(request)
    assert decode_request(data) == request and encode_request(decode_request(data)) == data


def test_responses_round_trip() -> None:
    feed = Feed()
    responses = [
        feed.do(Put("k", b"v")),
        feed.do(CompareAndSet("k", b"v", 7)),
        feed.do(LockAcquire("L", "o", 10)),
        feed.do(LockAcquire("L", "p", 10), client="c2"),
        feed.apply_bytes(b"\xc1"),
    ]
    for response in responses:
        assert decode_response(encode_response(response)) == response
    with pytest.raises(CommandError, match="unknown error code"):
        decode_response(msgpack.packb([1, "nope", 0, 0, None, None, None, None, 0, ""]))


_INT = st.integers(0, INT_MAX)
_RESPONSES = st.builds(
    Response, index=_INT, error=st.none() | st.sampled_from(list(ErrorCode)), version=_INT,
    previous=_INT, lease_id=st.none() | st.integers(1, INT_MAX),
    deadline_ms=st.none() | _INT, token=st.none() | st.integers(1, INT_MAX),
    holder=st.none() | st.text(min_size=1, max_size=5), deleted=_INT,
    detail=st.text(max_size=5),
) | st.builds(  # a plain write's answer, the common case
    lambda index, error, version, previous: Response(index, error, version, previous),
    _INT, st.none() | st.sampled_from(list(ErrorCode)), _INT, _INT,
)
_NOT_VALID = [True, False, -1, INT_MAX + 1, 1.0, b"", "x", "", [], None]
_ERROR_VALUES = {code.value for code in ErrorCode}


@given(response=_RESPONSES)
def test_every_response_round_trips(response: Response) -> None:
    assert decode_response(encode_response(response)) == response


@given(response=_RESPONSES)
def test_a_response_with_a_field_no_response_can_hold_is_refused(response: Response) -> None:
    for position in range(10):
        for bad in _NOT_VALID:
            items = response_to_wire(response)
            items[position] = bad
            if _holds_a_response(items):
                assert response_from_wire(items) == Response(
                    items[0], None if items[1] is None else ErrorCode(items[1]), *items[2:])
            else:
                with pytest.raises(CommandError):
                    response_from_wire(items)


def _holds_a_response(items: list[Any]) -> bool:
    """The rules of a response's list form, spelled out once more."""
    return (
        all(type(items[i]) is int and 0 <= items[i] <= INT_MAX for i in (0, 2, 3, 8))
        and (items[1] is None or (type(items[1]) is str and items[1] in _ERROR_VALUES))
        and all(items[i] is None or (type(items[i]) is int and low <= items[i] <= INT_MAX)
                for i, low in ((4, 1), (5, 0), (6, 1)))
        and (items[7] is None or (type(items[7]) is str and items[7] != ""))
        and type(items[9]) is str
    )


_TEXTS = st.text(min_size=1, max_size=6) | st.text(
    st.characters(codec="ascii"), min_size=1, max_size=6)
_PLAIN_PUT_REQUESTS = st.builds(
    lambda client, seq, now, key, value, lease: [
        REQUEST_FORMAT, client, seq, now, [1, key, value, lease]],
    _TEXTS, st.integers(1, INT_MAX), _INT, _TEXTS, st.binary(max_size=8),
    st.none() | st.integers(1, INT_MAX),
)
_NOT_VALID_IN_REQUESTS = [*_NOT_VALID, 0, "ключ", "\ud800", [1], [1, "k", b"v", None, None]]


def _outcome(decode: Any, items: Any) -> Any:
    try:
        decoded = decode(items)
    except CommandError as exc:
        return ("refused", str(exc))
    return ("built", type(decoded), decoded, type(getattr(decoded, "command", None)))


@given(items=_PLAIN_PUT_REQUESTS)
def test_plain_puts_decoded_at_once_equal_the_checked_decoding(items: list[Any]) -> None:
    # Replicas decode plain puts without the field-by-field checks; each bad value in
    # each field must still meet the same verdict as on the checked path.
    variants = [items]
    for position in range(5):
        for bad in _NOT_VALID_IN_REQUESTS:
            variants.append([*items[:position], bad, *items[position + 1:]])
    for position in range(4):
        for bad in _NOT_VALID_IN_REQUESTS:
            command = [*items[4][:position], bad, *items[4][position + 1:]]
            variants.append([*items[:4], command])
    for variant in variants:
        if not _packable(variant):
            continue  # no bytes decode to it (msgpack strings are valid UTF-8)
        assert _outcome(decode_request, msgpack.packb(variant)) == _outcome(
            request_from_wire, variant)
        # A batch's plain puts are applied from plain_put_fields: those it gives are
        # the checked request's, for a put without a lease.
        fields = plain_put_fields(variant)
        if fields is not None:
            request = request_from_wire(variant)
            assert isinstance(request.command, Put) and request.command.lease_id is None
            assert fields == (request.client_id, request.seq, request.now_ms,
                              request.command.key, request.command.value)
        if type(variant[4]) is list:
            assert _outcome(decode_command, msgpack.packb(variant[4])) == _outcome(
                command_from_wire, variant[4])
    assert hash(decode_request(msgpack.packb(items))) == hash(request_from_wire(items))


@given(client=_TEXTS, seq=st.integers(1, INT_MAX), now=_INT)
def test_a_leaders_request_item_built_at_once_equals_the_checked_request(
    client: str, seq: int, now: int,
) -> None:
    # The leader builds each write's request in list form (request_item) from the
    # client's fields, without Request's checks when they pass at once.
    fields: list[Any] = [client, seq, now]
    for position in range(3):
        for bad in _NOT_VALID_IN_REQUESTS:
            variant = [*fields[:position], bad, *fields[position + 1:]]
            assert _outcome(_leaders_request, variant) == _outcome(_checked_request, variant)
    assert _outcome(_leaders_request, fields) == _outcome(_checked_request, fields)


def _leaders_request(fields: list[Any]) -> bytes:
    return msgpack.packb(request_item(*fields, encode_command(Put("k", b"v"))))


def _checked_request(fields: list[Any]) -> bytes:
    return encode_request(Request(*fields, Put("k", b"v")))


def _packable(items: Any) -> bool:
    try:
        msgpack.packb(items)
    except (UnicodeEncodeError, ValueError, TypeError):
        return False
    return True


GARBAGE: list[tuple[bytes, str]] = [
    (b"", "not valid msgpack"),
    (b"\xc1", "not valid msgpack"),
    (b"\x93\x01", "not valid msgpack"),
    (msgpack.packb([1, "k"]) + b"x", "not valid msgpack"),
    (msgpack.packb({"k": 1}), "must be a list"),
    (msgpack.packb([]), "must not be an empty list"),
    (msgpack.packb([99, "k"]), "unknown command tag 99"),
    (msgpack.packb([True, "k", b"v", None]), "unknown command tag True"),
    (msgpack.packb([1, "k", b"v"]), "Put takes 3 fields, got 2"),
    (msgpack.packb([1, "k", "v-as-str", None], use_bin_type=True), "value must be bytes"),
    (msgpack.packb([1, "", b"v", None], use_bin_type=True), "key must not be empty"),
    (msgpack.packb([1, b"k", b"v", None], use_bin_type=True), "key must be a string"),
    (msgpack.packb([1, "k", b"v", 0], use_bin_type=True), "lease_id must be an integer"),
    (msgpack.packb([4, True]), "ttl_ms must be an integer"),
    (msgpack.packb([4, 0]), "ttl_ms must be an integer from 1"),
    (msgpack.packb([4, 2**63]), "ttl_ms must be an integer from 1 to"),
    (msgpack.packb([4, 1.5]), "ttl_ms must be an integer"),
    (msgpack.packb([3, "k", None, -1, None]), "expect_version must be an integer"),
]


@pytest.mark.parametrize(("data", "fragment"), GARBAGE)
def test_garbage_command_bytes_raise_command_error(data: bytes, fragment: str) -> None:
    with pytest.raises(CommandError, match=fragment):
        decode_command(data)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ([2, "c", 1, 0, [9]], "unknown request format 2"),
        ([True, "c", 1, 0, [9]], "unknown request format True"),
        ([1, "c", 0, 0, [9]], "seq must be an integer from 1"),
        ([1, "", 1, 0, [9]], r"seq \(of a request without client_id\)"),
        ([1, "c", 1, -5, [9]], "now_ms must be an integer"),
        ([1, None, 1, 0, [9]], "client_id must be a string"),
        ([1, "c", 1, 0], "request must have 5 items"),
    ],
)
def test_garbage_requests(fields: list[Any], fragment: str) -> None:
    data = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(CommandError, match=fragment):
        decode_request(data)
    feed = Feed()
    response = feed.apply_bytes(data)
    assert response.error is ErrorCode.INVALID_REQUEST
    assert fragment.split("\\")[0] in response.detail
    assert feed.store.applied_index == 1  # the entry is consumed all the same


def test_commands_refuse_bad_fields_on_construction() -> None:
    with pytest.raises(CommandError, match="key must not be empty"):
        Put("", b"v")
    with pytest.raises(CommandError, match="value must be bytes"):
        Put("k", bytearray(b"v"))  # type: ignore[arg-type]
    with pytest.raises(CommandError, match="not valid Unicode"):
        Delete("\ud800")
    with pytest.raises(CommandError, match="command must be a KV command"):
        Request("c", 1, 0, "put")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_from_apply(data: bytes) -> None:
    try:
        decode_request(data)
    except CommandError:
        pass
    response = KVStore().apply(1, data)
    assert response.index == 1


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_COMMANDS), st.data())
def test_mutated_requests_never_raise_from_apply(command: Command, data: st.DataObject) -> None:
    raw = bytearray(encode_request(Request("client", 1, 5, command)))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    store = KVStore()
    response = store.apply(1, bytes(raw))
    assert isinstance(response, Response)
    store.snapshot()  # whatever happened left a consistent state


# ------------------------------------------------------------------ snapshots


def busy_feed(rounds: int = 30, seed: int = 7) -> Feed:
    """A store with keys, leases, locks and sessions, from a seeded script."""
    rng = random.Random(seed)
    feed = Feed(KVStore(KVSettings(session_window=4, sessions_max=5)))
    for _ in range(rounds):
        feed.now_ms += rng.randrange(0, 40)
        client = rng.choice(["a", "b", "c", "d", "e", "f", ""])
        key = rng.choice(["x", "y", "z/1", "z/2", "ü"])
        lease = rng.choice([None, *range(1, feed.index + 1)])
        options: list[Command] = [
            Put(key, rng.randbytes(4), lease),
            Put(key, b"plain"),
            Delete(key),
            CompareAndSet(key, b"c", rng.randrange(3)),
            LeaseGrant(rng.randrange(1, 200)),
            LockAcquire(rng.choice("LM"), rng.choice("pq"), rng.randrange(1, 200)),
            LeaseKeepAlive(rng.randrange(1, feed.index + 2)),
        ]
        feed.do(rng.choice(options), client=client)
    return feed


def test_snapshot_restore_round_trip_is_exact() -> None:
    store = busy_feed(200).store
    data = store.snapshot()
    restored = KVStore.restore(data)
    assert restored.snapshot() == data
    assert restored.applied_index == store.applied_index and restored.now_ms == store.now_ms
    assert restored.range("", 10_000) == store.range("", 10_000)
    for lease_id in range(1, store.applied_index + 1):
        assert restored.lease(lease_id) == store.lease(lease_id)
    for name in "LM":
        assert restored.lock(name) == store.lock(name)
    assert restored.settings == store.settings


def test_snapshot_is_deterministic() -> None:
    assert busy_feed(200).store.snapshot() == busy_feed(200).store.snapshot()
    assert KVStore().snapshot() == KVStore.restore(KVStore().snapshot()).snapshot()


def test_snapshot_bytes_do_not_depend_on_the_hash_seed() -> None:
    # Sets of keys are iterated when leases end; nothing of that order may leak
    # into state. Different PYTHONHASHSEEDs must give the same bytes.
    root = Path(__file__).resolve().parent.parent
    script = (
        f"import hashlib, sys; sys.path[:0] = [{str(root)!r}, {str(root / 'tests')!r}];"
        "from test_kvstore import busy_feed;"
        "print(hashlib.sha256(busy_feed(300).store.snapshot()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stdout.strip()
        for seed in ["0", "1", "12345"]
    }
    assert digests == {hashlib.sha256(busy_feed(300).store.snapshot()).hexdigest()}


def test_restore_with_other_settings_keeps_state_and_applies_new_limits() -> None:
    feed = Feed()
    for key in "abc":
        feed.do(Put(key, b"v"), client=key)
    restored = KVStore.restore(feed.store.snapshot(), KVSettings(keys_max=2, sessions_max=2))
    assert len(restored) == 3 and restored.settings.keys_max == 2
    clients = [c for c, _ in decode_snapshot(restored.snapshot()).sessions]
    assert clients == ["b", "c"]  # the most recently used survive
    more = restored.apply(feed.index + 1, encode_request(Request("", 0, 0, Put("d", b"v"))))
    assert more.error is ErrorCode.TOO_LARGE


def test_restore_refuses_malformed_or_inconsistent_snapshots() -> None:
    good = msgpack.unpackb(busy_feed(60).store.snapshot(), raw=False)
    assert good[4] and good[5], "the script should leave items and leases"

    def broken(change: Any) -> bytes:
        copy = msgpack.unpackb(msgpack.packb(good, use_bin_type=True), raw=False)
        change(copy)
        return bytes(msgpack.packb(copy, use_bin_type=True))

    cases = {
        b"garbage": "not valid msgpack",
        broken(lambda s: s.__setitem__(0, 2)): "unknown snapshot format",
        broken(lambda s: s[1].__setitem__("keys_max", 0)): "keys_max",
        broken(lambda s: s[1].__setitem__("bogus", 1)): "bogus",
        broken(lambda s: s[4].append(s[4][0])): "keys not increasing",
        broken(lambda s: s[4][0].__setitem__(5, 10**9)): "lease",
        broken(lambda s: s[4][0].__setitem__(2, 0)): "version",
        broken(lambda s: s.__setitem__(5, [])): "lease",
        broken(lambda s: s[7].append(s[7][0])): "two sessions",
    }
    for data, fragment in cases.items():
        with pytest.raises(SnapshotError, match=fragment):
            KVStore.restore(data)


# ------------------------------------------------------------------ properties


KEYS = st.sampled_from(["a", "ab", "b", "ü", "a/x"])
VALUES = st.binary(max_size=6)  # value_bytes_max 4 below: some are too large
IDS = st.integers(1, 40)
NAMES = st.sampled_from(["L", "M"])
OWNERS = st.sampled_from(["o1", "o2"])
COMMANDS = st.one_of(
    st.builds(Put, KEYS, VALUES, st.none() | IDS),
    st.builds(Delete, KEYS),
    st.builds(CompareAndSet, KEYS, st.none() | VALUES, st.integers(0, 3), st.none() | IDS),
    st.builds(CompareAndSetWithWrites, st.just("w"), st.none() | VALUES, st.integers(0, 3),
              st.none() | IDS, st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=3,
                                        unique_by=lambda write: write[0]).map(tuple)),
    st.builds(LeaseGrant, st.integers(1, 80)),
    st.builds(LeaseKeepAlive, IDS),
    st.builds(LeaseRevoke, IDS),
    st.builds(LockAcquire, NAMES, OWNERS, st.integers(1, 80)),
    st.builds(LockRelease, NAMES, OWNERS, IDS),
    st.just(Tick()),
)
TIGHT = KVSettings(
    keys_max=4,
    value_bytes_max=4,
    sessions_max=3,
    session_window=3,
    leases_max=4,
    locks_max=2,
    lease_ttl_ms_max=60,
)


@st.composite
def entries(draw: st.DrawFn) -> list[bytes]:
    """Request bytes as a leader might commit them: retries, reordering, garbage."""
    out: list[bytes] = []
    seqs: dict[str, int] = {}
    now = 0
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["new", "new", "new", "retry", "garbage"]))
        if kind == "retry" and out:
            out.append(out[draw(st.integers(0, len(out) - 1))])
            continue
        if kind == "garbage":
            out.append(draw(st.binary(max_size=8)))
            continue
        now = max(0, now + draw(st.integers(-5, 30)))  # leaders' clocks may step back
        client = draw(st.sampled_from(["", "c1", "c2", "c3", "c4"]))
        seq = 0
        if client:
            seq = max(1, seqs.get(client, 0) + draw(st.integers(-3, 2)))
            seqs[client] = max(seqs.get(client, 0), seq)
        out.append(encode_request(Request(client, seq, now, draw(COMMANDS))))
    return out


def check_invariants(store: KVStore) -> None:
    """Cross references hold, as seen through the public reads."""
    items = store.range("", 10_000)
    assert len(items) == len(store) <= TIGHT.keys_max
    assert [i.key for i in items] == sorted(i.key for i in items)
    for item in items:
        assert 1 <= item.version and item.create_index <= item.mod_index <= store.applied_index
        if item.lease is not None:
            lease = store.lease(item.lease)
            assert lease is not None and item.key in lease.keys
    for name in ["L", "M"]:
        lock = store.lock(name)
        if lock is not None:
            lease = store.lease(lock.lease_id)
            assert lease is not None and lease.lock == name and lease.deadline_ms > store.now_ms


def run(store: KVStore, data: list[bytes], first_index: int = 1) -> list[Response]:
    return [store.apply(first_index + n, entry) for n, entry in enumerate(data)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries())
def test_replicas_applying_the_same_entries_agree(data: list[bytes]) -> None:
    one, two = KVStore(TIGHT), KVStore(TIGHT)
    for index, entry in enumerate(data, start=1):
        assert one.apply(index, entry) == two.apply(index, entry)
        check_invariants(one)
    assert one.snapshot() == two.snapshot()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries(), st.data())
def test_snapshot_anywhere_then_restore_then_the_rest_gives_the_same_state(
    data: list[bytes], draw: st.DataObject
) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    whole = KVStore(TIGHT)
    expected = run(whole, data)
    part = KVStore(TIGHT)
    head = run(part, data[:cut])
    resumed = KVStore.restore(part.snapshot())
    assert resumed.snapshot() == part.snapshot()
    tail = run(resumed, data[cut:], first_index=cut + 1)
    assert head + tail == expected
    assert resumed.snapshot() == whole.snapshot()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "delete", "cas"]), KEYS, st.integers(0, 3), VALUES),
        max_size=40,
    )
)
def test_versions_follow_a_simple_model(ops: list[tuple[str, str, int, bytes | None]]) -> None:
    """Versions and CAS against a dict of (value, version): deletes forget versions."""
    feed = Feed()
    model: dict[str, tuple[bytes, int]] = {}
    for op, key, expect, value in ops:
        current = model[key][1] if key in model else 0
        if op == "put":
            response = feed.do(Put(key, value or b""))
            model[key] = (value or b"", current + 1)
            assert response.ok and (response.version, response.previous) == (current + 1, current)
        elif op == "delete":
            response = feed.do(Delete(key))
            assert response.ok == (key in model)
            model.pop(key, None)
        else:
            response = feed.do(CompareAndSet(key, value, expect))
            if expect != current:
                assert response.error is ErrorCode.CAS_FAILED and response.version == current
            elif value is None:
                assert response.ok
                model.pop(key, None)
            else:
                assert response.ok and response.version == current + 1
                model[key] = (value, current + 1)
    assert {i.key: (i.value, i.version) for i in feed.store.range("")} == model


def test_every_command_type_is_in_the_round_trip_table() -> None:
    covered = {type(c) for c in ALL_COMMANDS}
    assert covered == {
        Put,
        Delete,
        CompareAndSet,
        LeaseGrant,
        LeaseKeepAlive,
        LeaseRevoke,
        LockAcquire,
        LockRelease,
        Tick,
    }


def test_entries_must_come_in_increasing_index_order() -> None:
    feed = Feed()
    feed.do(Tick())
    with pytest.raises(AssertionError):
        feed.store.apply(1, feed.entry(Tick()))
