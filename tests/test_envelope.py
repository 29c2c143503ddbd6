"""Envelopes in process: round trips, every rejection reason, and hostile bytes."""

from __future__ import annotations

import hashlib
import time

import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from consensus.hlc import HybridClock, make_timestamp
from mesh.codec import pack, unpack
from mesh.config import EnvelopeConfig
from mesh.envelope import (
    SIGNATURE_BYTES,
    SIGNING_CONTEXT,
    WIRE_VERSION,
    Envelope,
    EnvelopeOpener,
    EnvelopeSealer,
    PayloadRegistry,
    Rejected,
    Rejection,
    signing_digest,
)
from mesh.errors import CodecError
from mesh.identity import Certificate, ClusterAuthority, Identity
from mesh.parallel import SplitMap
from mesh.trust import SODIUM_VERIFY_BYTES_MAX, TrustStore

KIND = "test.note"
NOW_MS = 1_800_000_000_000
AUTHORITY = ClusterAuthority(Identity.generate())
STRANGER_AUTHORITY = ClusterAuthority(Identity.generate())


class Note(BaseModel):
    text: str = Field(max_length=100)
    count: int = 0


def certify(identity: Identity, authority: ClusterAuthority = AUTHORITY,
            not_after: int = NOW_MS // 1000 + 3600) -> Certificate:
    return authority.issue(name="n", public_key=identity.public_key, roles=["node"],
                           not_after=not_after)


SENDER = Identity.generate()
RECEIVER = Identity.generate()


def sealer(identity: Identity = SENDER, first_seq: int = 1000) -> EnvelopeSealer:
    return EnvelopeSealer(identity, certify(identity), first_seq=first_seq)


def opener(**limits: int) -> EnvelopeOpener:
    registry = PayloadRegistry()
    registry.register(KIND, Note)
    return EnvelopeOpener(
        local_node_id=RECEIVER.node_id,
        limits=EnvelopeConfig(**limits),
        trust=TrustStore(AUTHORITY.public_key, capacity=16),
        registry=registry,
        clock=HybridClock(),
    )


def open_frame(
    receiver: EnvelopeOpener, frame: bytes, wall_ms: int = NOW_MS
) -> Envelope | Rejected:
    return receiver.open(frame, wall_ms=wall_ms, now_unix_s=wall_ms / 1000)


def reason_of(outcome: Envelope | Rejected) -> Rejection | None:
    return outcome.reason if isinstance(outcome, Rejected) else None


def resign(fields: list[object], identity: Identity = SENDER) -> bytes:
    signed = pack(fields)
    return signed + identity.sign(signing_digest(signed))


def fields_of(frame: bytes) -> list[object]:
    decoded = unpack(frame[:-SIGNATURE_BYTES], max_bytes=len(frame))
    assert isinstance(decoded, list)
    return decoded


# -- round trips ---------------------------------------------------------------------


def test_a_sealed_batch_opens_to_the_same_payloads_and_header() -> None:
    notes = [Note(text=f"n{i}", count=i) for i in range(50)]
    seq, frame = sealer().seal(KIND, notes, wall_ms=NOW_MS, recipient=RECEIVER.node_id,
                               trace="00-trace", on_behalf_of="alice", reply_to=7,
                               attach_certificate=True)
    receiver = opener()
    envelope = open_frame(receiver, frame)
    assert isinstance(envelope, Envelope), envelope
    assert envelope.payloads == tuple(notes)
    assert (envelope.kind, envelope.sender, envelope.recipient, envelope.seq) == (
        KIND, SENDER.node_id, RECEIVER.node_id, seq)
    assert (envelope.trace, envelope.on_behalf_of, envelope.reply_to) == ("00-trace", "alice", 7)
    assert receiver.accepted == 1
    assert set(receiver.rejected_by_name().values()) == {0}


def test_a_certificate_presented_once_admits_later_envelopes_without_it() -> None:
    sending, receiver = sealer(), opener()
    first = sending.seal(KIND, [Note(text="a")], wall_ms=NOW_MS, attach_certificate=True)[1]
    later = sending.seal(KIND, [Note(text="b")], wall_ms=NOW_MS)[1]
    assert isinstance(open_frame(receiver, first), Envelope)
    assert isinstance(open_frame(receiver, later), Envelope)


def test_received_timestamps_move_the_local_clock_forward() -> None:
    receiver = opener()
    ahead_ms = NOW_MS + 2_000
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=ahead_ms, attach_certificate=True)[1]
    assert isinstance(open_frame(receiver, frame), Envelope)
    assert receiver.clock.now(NOW_MS) > make_timestamp(ahead_ms)


def test_sequence_numbers_increase_from_the_first() -> None:
    sending = sealer(first_seq=NOW_MS * 1000 + 5)
    seqs = [sending.seal(KIND, [Note(text="x")], wall_ms=NOW_MS)[0] for _ in range(3)]
    assert seqs == [NOW_MS * 1000 + 5, NOW_MS * 1000 + 6, NOW_MS * 1000 + 7]


def test_sequence_numbers_follow_the_wall_clock_and_never_go_back() -> None:
    sending = sealer(first_seq=1)
    first = sending.seal(KIND, [Note(text="x")], wall_ms=NOW_MS)[0]
    later = sending.seal(KIND, [Note(text="x")], wall_ms=NOW_MS + 2)[0]
    clock_stepped_back = sending.seal(KIND, [Note(text="x")], wall_ms=NOW_MS - 1000)[0]
    assert (first, later, clock_stepped_back) == (NOW_MS * 1000, (NOW_MS + 2) * 1000,
                                                  (NOW_MS + 2) * 1000 + 1)


def test_two_processes_sharing_an_identity_both_get_through() -> None:
    receiver = opener()
    first_cli, second_cli = sealer(first_seq=1), sealer(first_seq=1)
    for offset_us in range(0, 20_000, 700):  # interleaved, as two CLI commands at once
        for shift, cli in ((3, second_cli), (0, first_cli)):
            wall_us = NOW_MS * 1000 + offset_us + shift
            frame = cli.seal(KIND, [Note(text="x")], wall_ms=wall_us // 1000, wall_us=wall_us,
                             attach_certificate=True)[1]
            assert not isinstance(open_frame(receiver, frame, wall_us // 1000), Rejected)


# -- each rejection reason, crafted --------------------------------------------------


def test_too_large_is_checked_before_anything_else() -> None:
    receiver = opener(envelope_size_bytes_max=1024)
    outcome = open_frame(receiver, b"\xc1" * 2000)  # also garbage, but size comes first
    assert reason_of(outcome) is Rejection.TOO_LARGE
    assert "envelope_size_bytes_max (1024)" in outcome.detail  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"x" * SIGNATURE_BYTES,
        b"\xc1" * 100,  # never-used msgpack byte
        pack([1, 2, 3]) + bytes(SIGNATURE_BYTES),  # wrong number of fields
        pack({"a": 1}) + bytes(SIGNATURE_BYTES),
        pack([1, KIND])[:-2] + bytes(SIGNATURE_BYTES),  # truncated
    ],
    ids=["empty", "only-signature", "invalid-msgpack", "short-header", "map", "truncated"],
)
def test_undecodable_frames_are_malformed(frame: bytes) -> None:
    receiver = opener()
    assert reason_of(open_frame(receiver, frame)) is Rejection.MALFORMED
    assert receiver.rejected[Rejection.MALFORMED] == 1


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, WIRE_VERSION + 1),
        (1, ""),
        (1, "k" * 65),
        (2, b"short"),
        (3, b"x" * 3),
        (4, -1),
        (4, True),
        (5, 1.5),
        (6, 7),
        (7, "p" * 257),
        (8, "not-an-int"),
        (9, "not-a-list"),
        (10, []),
    ],
)
def test_each_malformed_header_field_is_named(index: int, value: object) -> None:
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS, attach_certificate=True)[1]
    fields = fields_of(frame)
    fields[index] = value
    assert reason_of(open_frame(opener(), resign(fields))) is Rejection.MALFORMED


def test_a_batch_larger_than_allowed_is_malformed() -> None:
    notes = [Note(text="a")] * 101
    frame = sealer().seal(KIND, notes, wall_ms=NOW_MS, attach_certificate=True)[1]
    assert reason_of(open_frame(opener(batch_entries_max=100), frame)) is Rejection.MALFORMED


def test_a_sender_without_certificate_is_unknown() -> None:
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS)[1]
    assert reason_of(open_frame(opener(), frame)) is Rejection.UNKNOWN_SENDER


def test_a_certificate_from_another_authority_is_unknown_sender() -> None:
    stranger = Identity.generate()
    sending = EnvelopeSealer(stranger, certify(stranger, STRANGER_AUTHORITY), first_seq=1)
    frame = sending.seal(KIND, [Note(text="a")], wall_ms=NOW_MS, attach_certificate=True)[1]
    outcome = open_frame(opener(), frame)
    assert reason_of(outcome) is Rejection.UNKNOWN_SENDER
    assert "not by this cluster's authority" in outcome.detail  # type: ignore[union-attr]


def test_an_expired_certificate_is_unknown_sender() -> None:
    sending = EnvelopeSealer(SENDER, certify(SENDER, not_after=NOW_MS // 1000 - 1), first_seq=1)
    frame = sending.seal(KIND, [Note(text="a")], wall_ms=NOW_MS, attach_certificate=True)[1]
    assert reason_of(open_frame(opener(), frame)) is Rejection.UNKNOWN_SENDER


def test_somebody_elses_certificate_is_unknown_sender() -> None:
    other = Identity.generate()
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS)[1]
    fields = fields_of(frame)
    fields[9] = certify(other).to_wire()
    outcome = open_frame(opener(), resign(fields))
    assert reason_of(outcome) is Rejection.UNKNOWN_SENDER
    assert "carries the certificate of" in outcome.detail  # type: ignore[union-attr]


def test_a_tampered_body_fails_the_signature() -> None:
    frame = sealer().seal(KIND, [Note(text="pay 10")], wall_ms=NOW_MS, attach_certificate=True)[1]
    tampered = frame.replace(b"pay 10", b"pay 99")
    assert tampered != frame
    assert reason_of(open_frame(opener(), tampered)) is Rejection.BAD_SIGNATURE


def test_a_signature_by_another_key_fails() -> None:
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS, attach_certificate=True)[1]
    forged = resign(fields_of(frame), identity=Identity.generate())
    assert reason_of(open_frame(opener(), forged)) is Rejection.BAD_SIGNATURE


@pytest.mark.parametrize(
    "size", [0, 300, SODIUM_VERIFY_BYTES_MAX, SODIUM_VERIFY_BYTES_MAX + 1, 200_000]
)
def test_both_verifiers_accept_exactly_the_senders_signatures(size: int) -> None:
    # Small data is checked by libsodium, large by OpenSSL: both must agree.
    store = TrustStore(AUTHORITY.public_key, capacity=4)
    trusted = store.add(certify(SENDER), NOW_MS / 1000)
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    signature = SENDER.sign(data)
    assert trusted.signature_valid(signature, data)
    assert not trusted.signature_valid(Identity.generate().sign(data), data)
    assert not trusted.signature_valid(signature, data + b"!")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not trusted.signature_valid(flipped, data)
    assert not trusted.signature_valid(signature[:63], data)
    assert not trusted.signature_valid(signature + b"\0", data)


def test_a_replayed_envelope_is_refused_once_seen() -> None:
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS, attach_certificate=True)[1]
    receiver = opener()
    assert isinstance(open_frame(receiver, frame), Envelope)
    assert reason_of(open_frame(receiver, frame)) is Rejection.REPLAY
    assert receiver.rejected[Rejection.REPLAY] == 1


def test_envelopes_older_than_the_window_are_replays_but_reordering_within_is_fine() -> None:
    sending, receiver = sealer(), opener(replay_window_messages=64)
    frames = [sending.seal(KIND, [Note(text=str(i))], wall_ms=NOW_MS + i,
                           wall_us=(NOW_MS + i) * 1000, attach_certificate=True)[1]
              for i in range(100)]
    for i in range(100):
        if i not in (5, 90):
            assert isinstance(open_frame(receiver, frames[i]), Envelope)
    # Sealed 9 ms before the last one, but only 9 envelopes ago: reordering, fine.
    assert isinstance(open_frame(receiver, frames[90]), Envelope)
    # 94 envelopes ago, more than the window remembers: refused.
    assert reason_of(open_frame(receiver, frames[5])) is Rejection.REPLAY
    assert reason_of(open_frame(receiver, frames[95])) is Rejection.REPLAY  # seen


def test_an_envelope_for_another_recipient_counts_as_replay() -> None:
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS, recipient=SENDER.node_id,
                          attach_certificate=True)[1]
    outcome = open_frame(opener(), frame)
    assert reason_of(outcome) is Rejection.REPLAY
    assert "not to this node" in outcome.detail  # type: ignore[union-attr]


@pytest.mark.parametrize(("offset_ms", "limits"), [
    (6_000, {"clock_skew_max_ms": 5_000}),
    (-121_000, {"message_age_max_ms": 120_000}),
])
def test_timestamps_outside_the_skew_bounds_are_refused(offset_ms: int,
                                                        limits: dict[str, int]) -> None:
    frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS + offset_ms,
                          attach_certificate=True)[1]
    assert reason_of(open_frame(opener(**limits), frame)) is Rejection.CLOCK_SKEW


def test_timestamps_inside_the_skew_bounds_are_accepted() -> None:
    for offset_ms in (4_900, -119_000):
        frame = sealer().seal(KIND, [Note(text="a")], wall_ms=NOW_MS + offset_ms,
                              attach_certificate=True)[1]
        assert isinstance(open_frame(opener(), frame), Envelope)


class Unregistered(BaseModel):
    anything: int


def test_payloads_failing_their_schema_or_of_unknown_kind_are_bad_payload() -> None:
    receiver = opener()
    sending = sealer()
    invalid = sending.seal(KIND, [Unregistered(anything=1)], wall_ms=NOW_MS,
                           attach_certificate=True)[1]
    unknown = sending.seal("test.unknown", [Note(text="a")], wall_ms=NOW_MS)[1]
    too_long = sending.seal(KIND, [Note.model_construct(text="x" * 101, count=0)],
                            wall_ms=NOW_MS)[1]
    for frame in (invalid, unknown, too_long):
        assert reason_of(open_frame(receiver, frame)) is Rejection.BAD_PAYLOAD
    assert receiver.rejected[Rejection.BAD_PAYLOAD] == 3


def test_one_bad_payload_among_many_refuses_the_envelope_and_names_its_place() -> None:
    receiver = opener()
    notes: list[BaseModel] = [Note(text=f"n{i}") for i in range(20)]
    notes[13] = Note.model_construct(text="x" * 101, count=0)
    outcome = open_frame(receiver, sealer().seal(KIND, notes, wall_ms=NOW_MS,
                                                 attach_certificate=True)[1])
    assert isinstance(outcome, Rejected) and outcome.reason is Rejection.BAD_PAYLOAD
    assert "13" in outcome.detail and "text" in outcome.detail


def test_a_body_of_mixed_models_is_sealed_payload_by_payload() -> None:
    class Other(BaseModel):
        text: str
        count: int = 0
        extra: bool = True

    receiver = opener()
    frame = sealer().seal(KIND, [Note(text="a"), Other(text="b")], wall_ms=NOW_MS,
                          attach_certificate=True)[1]
    body = fields_of(frame)[10]
    assert body == [{"text": "a", "count": 0}, {"text": "b", "count": 0, "extra": True}]
    envelope = open_frame(receiver, frame)  # Note ignores fields it does not know
    assert isinstance(envelope, Envelope)
    assert envelope.payloads == (Note(text="a"), Note(text="b"))


def test_a_bad_payload_uses_up_its_sequence_number() -> None:
    receiver = opener()
    frame = sealer().seal(KIND, [Unregistered(anything=1)], wall_ms=NOW_MS,
                          attach_certificate=True)[1]
    assert reason_of(open_frame(receiver, frame)) is Rejection.BAD_PAYLOAD
    assert reason_of(open_frame(receiver, frame)) is Rejection.REPLAY


def test_every_reason_has_its_own_counter() -> None:
    assert [r.value for r in Rejection] == [
        "too_large", "malformed", "unknown_sender", "bad_signature", "replay", "clock_skew",
        "bad_payload",
    ]
    assert set(opener().rejected_by_name()) == {r.value for r in Rejection}


def test_registering_a_kind_twice_to_another_model_is_refused() -> None:
    registry = PayloadRegistry()
    registry.register(KIND, Note)
    registry.register(KIND, Note)
    with pytest.raises(ValueError, match="already registered to Note"):
        registry.register(KIND, Unregistered)
    with pytest.raises(ValueError, match="1 to 64 characters"):
        registry.register("", Note)


# -- hostile bytes -------------------------------------------------------------------

HOSTILE = settings(max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


@HOSTILE
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_and_are_always_refused(frame: bytes) -> None:
    receiver = opener()
    outcome = open_frame(receiver, frame)
    assert isinstance(outcome, Rejected)
    assert sum(receiver.rejected.values()) == 1


@HOSTILE
@given(st.binary(max_size=4096))
def test_the_decoder_raises_only_codec_errors(data: bytes) -> None:
    try:
        unpack(data, max_bytes=1024)
    except CodecError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=5),
    max_leaves=20,
)


@HOSTILE
@given(st.lists(msgpack_values, min_size=11, max_size=11))
def test_well_formed_msgpack_headers_of_any_content_never_raise(fields: list[object]) -> None:
    receiver = opener()
    outcome = open_frame(receiver, resign(fields))
    assert isinstance(outcome, Rejected)


VALID_FRAME = sealer(first_seq=1).seal(KIND, [Note(text="hello", count=3)], wall_ms=NOW_MS,
                                       attach_certificate=True)[1]


@HOSTILE
@given(st.data())
def test_any_mutation_of_a_valid_frame_is_refused(data: st.DataObject) -> None:
    frame = bytearray(VALID_FRAME)
    position = data.draw(st.integers(0, len(frame) - 1))
    flip = data.draw(st.integers(1, 255))
    frame[position] ^= flip
    outcome = open_frame(opener(), bytes(frame))
    assert isinstance(outcome, Rejected)


@HOSTILE
@given(st.integers(1, len(VALID_FRAME) - 1))
def test_any_truncation_of_a_valid_frame_is_refused(length: int) -> None:
    assert isinstance(open_frame(opener(), VALID_FRAME[:length]), Rejected)


def test_the_valid_frame_used_above_opens() -> None:
    assert isinstance(open_frame(opener(), VALID_FRAME), Envelope)


def test_sealing_and_opening_is_fast_enough_for_the_receive_path() -> None:
    # Not a benchmark (scripts/bench_transport.py is): a guard against an
    # accidental order-of-magnitude slowdown, with a generous bound.
    sending, receiver = sealer(), opener()
    frames = [sending.seal(KIND, [Note(text="x")], wall_ms=NOW_MS, attach_certificate=True)[1]
              for _ in range(200)]
    start = time.perf_counter()
    for frame in frames:
        assert isinstance(open_frame(receiver, frame), Envelope)
    assert time.perf_counter() - start < 5.0


# -- batches verified on several threads ---------------------------------------------


def test_a_batch_opened_on_threads_matches_opening_frame_by_frame() -> None:
    sending = sealer()
    good = [sending.seal(KIND, [Note(text=str(i))], wall_ms=NOW_MS, attach_certificate=True)[1]
            for i in range(40)]
    forged = resign(fields_of(good[5]), identity=Identity.generate())
    frames = [*good[:20], good[3], forged, b"garbage" * 20, *good[20:], good[39]]
    one_by_one = opener()
    expected = [reason_of(open_frame(one_by_one, frame)) for frame in frames]
    split = SplitMap(threads=3)
    try:
        batched = opener()
        outcomes = batched.open_many(frames, wall_ms=NOW_MS, now_unix_s=NOW_MS / 1000,
                                     parallel_map=split)
    finally:
        split.close()
    assert [reason_of(o) for o in outcomes] == expected
    assert expected.count(Rejection.REPLAY) == 2  # repeats within one batch are caught
    assert Rejection.BAD_SIGNATURE in expected and Rejection.MALFORMED in expected
    assert batched.rejected == one_by_one.rejected and batched.accepted == one_by_one.accepted
    texts = [o.payloads[0].text for o in outcomes if isinstance(o, Envelope)]  # type: ignore[attr-defined]
    assert texts == [str(i) for i in range(40)]


def test_split_map_keeps_order_and_refuses_zero_threads() -> None:
    split = SplitMap(threads=4)
    try:
        assert split(lambda x: x * 2, list(range(101))) == [x * 2 for x in range(101)]
        assert split(lambda x: x, []) == []
    finally:
        split.close()
    with pytest.raises(ValueError, match=r"threads \(0\) must be at least 1"):
        SplitMap(threads=0)


def test_the_signature_signs_the_context_and_the_digest_of_the_bytes_before_it() -> None:
    _, frame = sealer().seal(KIND, [Note(text="n", count=i) for i in range(500)],
                             wall_ms=NOW_MS)
    signed, signature = frame[:-SIGNATURE_BYTES], frame[-SIGNATURE_BYTES:]
    # Checked with OpenSSL directly, not through the mesh's own verifier.
    digest = SIGNING_CONTEXT + hashlib.sha256(signed).digest()
    SENDER.private_key.public_key().verify(signature, digest)
    with pytest.raises(InvalidSignature):
        SENDER.private_key.public_key().verify(signature, signed)


def test_a_frame_signed_over_its_bytes_rather_than_their_digest_is_refused() -> None:
    _, frame = sealer().seal(KIND, [Note(text="hello")], wall_ms=NOW_MS,
                             attach_certificate=True)
    signed = frame[:-SIGNATURE_BYTES]
    outcome = open_frame(opener(), signed + SENDER.sign(signed))
    assert reason_of(outcome) is Rejection.BAD_SIGNATURE
