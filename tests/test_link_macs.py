"""Link MACs: envelopes between two known nodes authenticated by a shared key.

In process for the envelope layer (who can check a tag, what a changed byte
or a wrong recipient gets), and over real sockets for the runtime's choice of
MAC or signature, including an address taken over by another node.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from consensus.hlc import HybridClock
from mesh.codec import pack, unpack
from mesh.config import EnvelopeConfig, NodeConfig
from mesh.envelope import (
    LINK_WIRE_VERSION,
    SIGNATURE_BYTES,
    WIRE_VERSION,
    Envelope,
    EnvelopeOpener,
    EnvelopeSealer,
    PayloadRegistry,
    Rejected,
    Rejection,
)
from mesh.errors import RequestTimeout
from mesh.identity import Certificate, ClusterAuthority, Identity
from mesh.link_keys import LinkKeys, link_mac
from mesh.parallel import SplitMap
from mesh.runtime import Inbound, Node
from mesh.trust import TrustStore

KIND = "test.note"
NOW_MS = 1_800_000_000_000
AUTHORITY = ClusterAuthority(Identity.generate())


class Note(BaseModel):
    text: str


def certify(identity: Identity, name: str = "n") -> Certificate:
    return AUTHORITY.issue(name=name, public_key=identity.public_key, roles=["node"],
                           not_after=NOW_MS // 1000 + 3600)


class Party:
    """One node's envelope layer: its sealer and opener over one trust store."""

    def __init__(self, *, send_macs: bool = True, receive_macs: bool = True,
                 identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.certificate = certify(self.identity)
        self.trust = TrustStore(AUTHORITY.public_key, capacity=16)
        self.trust.add(self.certificate, NOW_MS / 1000)
        self.links = LinkKeys(self.identity, self.trust, capacity=16)
        self.sealer = EnvelopeSealer(self.identity, self.certificate, first_seq=1,
                                     links=self.links if send_macs else None)
        registry = PayloadRegistry()
        registry.register(KIND, Note)
        self.opener = EnvelopeOpener(
            local_node_id=self.identity.node_id, limits=EnvelopeConfig(), trust=self.trust,
            registry=registry, clock=HybridClock(),
            links=self.links if receive_macs else None,
        )

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    def knows(self, *others: Party) -> None:
        for other in others:
            self.trust.add(other.certificate, NOW_MS / 1000)

    def seal(self, to: Party | None, text: str = "hi", *, certificate: bool = False) -> bytes:
        return self.sealer.seal(KIND, [Note(text=text)], wall_ms=NOW_MS,
                                recipient=None if to is None else to.node_id,
                                attach_certificate=certificate)[1]

    def open(self, frame: bytes) -> Envelope | Rejected:
        return self.opener.open(frame, wall_ms=NOW_MS, now_unix_s=NOW_MS / 1000)


def version_of(frame: bytes) -> int:
    fields = unpack(frame[:-SIGNATURE_BYTES], max_bytes=len(frame))
    assert isinstance(fields, list)
    return int(fields[0])


def reason_of(outcome: Envelope | Rejected) -> Rejection | None:
    return outcome.reason if isinstance(outcome, Rejected) else None


# -- keys ------------------------------------------------------------------------------


def test_both_ends_derive_the_same_key_for_each_direction_and_different_ones_across() -> None:
    alice, bob, carol = Party(), Party(), Party()
    alice.knows(bob, carol)
    bob.knows(alice, carol)
    carol.knows(alice, bob)
    alice_to_bob = alice.links.sending_key(bob.node_id)
    assert alice_to_bob is not None
    assert bob.links.receiving_key(alice.node_id, alice.identity.public_key) == alice_to_bob
    bob_to_alice = bob.links.sending_key(alice.node_id)
    assert alice.links.receiving_key(bob.node_id, bob.identity.public_key) == bob_to_alice
    assert bob_to_alice != alice_to_bob
    # A third node's keys with either of them share nothing with theirs.
    carols = {carol.links.sending_key(alice.node_id), carol.links.sending_key(bob.node_id)}
    assert alice_to_bob not in carols and bob_to_alice not in carols


def test_no_key_for_a_node_whose_certificate_is_not_held() -> None:
    alice, bob = Party(), Party()
    assert alice.links.sending_key(bob.node_id) is None


def test_a_public_key_off_the_curve_gives_no_key_and_is_counted() -> None:
    alice = Party()
    low_order = bytes(32)  # the identity point's encoding is not a usable key
    assert alice.links.receiving_key(b"\x01" * 16, low_order) is None
    assert alice.links.unusable_keys == 1


def test_the_cache_is_bounded_and_checked_against_the_public_key() -> None:
    alice = Party()
    links = LinkKeys(alice.identity, alice.trust, capacity=2)
    peers = [Party() for _ in range(3)]
    keys = [links.receiving_key(p.node_id, p.identity.public_key) for p in peers]
    assert len(set(keys)) == 3 and len(links._keys) == 2
    # The same node id with another key (not a real node: ids come from keys) never
    # gets the key of the first.
    assert links.receiving_key(peers[2].node_id, peers[0].identity.public_key) != keys[2]


# -- envelopes -------------------------------------------------------------------------


def test_an_envelope_to_a_known_node_carries_a_link_mac_and_opens() -> None:
    alice, bob = Party(), Party()
    alice.knows(bob)
    frame = alice.seal(bob, certificate=True)
    assert version_of(frame) == LINK_WIRE_VERSION
    envelope = bob.open(frame)
    assert isinstance(envelope, Envelope), envelope
    assert envelope.link_mac and envelope.sender == alice.node_id
    assert envelope.payloads == (Note(text="hi"),)
    assert (bob.opener.accepted, bob.opener.accepted_by_link_mac) == (1, 1)


def test_without_a_recipient_or_its_certificate_or_the_setting_an_envelope_is_signed() -> None:
    alice, bob = Party(), Party()
    bob.knows(alice)
    assert version_of(alice.seal(None)) == WIRE_VERSION
    assert version_of(alice.seal(bob)) == WIRE_VERSION  # alice has no certificate of bob
    quiet = Party(send_macs=False)
    quiet.knows(bob)
    bob.knows(quiet)
    frame = quiet.seal(bob)
    assert version_of(frame) == WIRE_VERSION
    opened = bob.open(frame)
    assert isinstance(opened, Envelope) and not opened.link_mac


def test_every_changed_byte_of_a_link_mac_frame_is_refused() -> None:
    alice, bob = Party(), Party()
    alice.knows(bob)
    bob.knows(alice)
    frame = alice.seal(bob, "a longer text to flip bytes in")
    for position in range(len(frame)):
        changed = bytearray(frame)
        changed[position] ^= 0x01
        outcome = bob.open(bytes(changed))
        assert isinstance(outcome, Rejected), position
    assert bob.opener.accepted == 0
    assert isinstance(bob.open(frame), Envelope)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=SIGNATURE_BYTES, max_size=SIGNATURE_BYTES))
def test_a_made_up_tag_is_refused_as_a_bad_signature(tag: bytes) -> None:
    alice, bob = PAIR
    frame = alice.seal(bob)
    forged = frame[:-SIGNATURE_BYTES] + tag
    if forged != frame:
        assert reason_of(bob.open(forged)) is Rejection.BAD_SIGNATURE


def _known_pair() -> tuple[Party, Party]:
    alice, bob = Party(), Party()
    alice.knows(bob)
    bob.knows(alice)
    return alice, bob


PAIR = _known_pair()


def test_a_third_node_cannot_check_or_make_a_pairs_tags() -> None:
    alice, bob = _known_pair()
    mallory = Party()
    mallory.knows(alice, bob)
    alice.knows(mallory)
    bob.knows(mallory)
    # Mallory's own tag under the key it shares with bob does not pass as alice's.
    fields = unpack(alice.seal(bob)[:-SIGNATURE_BYTES], max_bytes=1 << 20)
    assert isinstance(fields, list)
    fields[1], fields[4] = KIND, fields[4] + 1
    signed = pack(fields)
    mallory_key = mallory.links.sending_key(bob.node_id)
    assert mallory_key is not None
    outcome = bob.open(signed + link_mac(mallory_key, signed))
    assert reason_of(outcome) is Rejection.BAD_SIGNATURE
    # A frame for bob shown to mallory (or to alice, reflected) is not for them.
    frame = alice.seal(bob)
    assert reason_of(mallory.open(frame)) is Rejection.REPLAY
    assert reason_of(alice.open(frame)) is Rejection.REPLAY


def test_a_link_mac_envelope_without_a_recipient_is_malformed() -> None:
    alice, bob = _known_pair()
    fields = unpack(alice.seal(bob)[:-SIGNATURE_BYTES], max_bytes=1 << 20)
    assert isinstance(fields, list)
    fields[3] = None
    signed = pack(fields)
    key = alice.links.sending_key(bob.node_id)
    assert key is not None
    outcome = bob.open(signed + link_mac(key, signed))
    assert reason_of(outcome) is Rejection.MALFORMED
    assert isinstance(outcome, Rejected) and "names no recipient" in outcome.detail


def test_a_link_mac_from_an_unknown_sender_is_refused_before_any_key_work() -> None:
    alice, bob = Party(), Party()
    alice.knows(bob)
    frame = alice.seal(bob)  # no certificate attached, and bob never met alice
    assert reason_of(bob.open(frame)) is Rejection.UNKNOWN_SENDER


def test_an_opener_without_link_keys_calls_a_link_mac_malformed() -> None:
    alice, bob = Party(), Party(receive_macs=False)
    alice.knows(bob)
    outcome = bob.open(alice.seal(bob, certificate=True))
    assert reason_of(outcome) is Rejection.MALFORMED
    assert isinstance(outcome, Rejected) and "wire version 3 is not 2" in outcome.detail


def test_a_batch_of_macs_and_signatures_opened_on_threads_matches_one_by_one() -> None:
    alice, bob = _known_pair()
    stranger = Party()  # holds no certificate of bob: its frames are signed
    stranger_frames = [stranger.seal(bob, f"s{i}", certificate=True) for i in range(10)]
    mac_frames = [alice.seal(bob, f"a{i}") for i in range(20)]
    tampered = bytearray(mac_frames[7])
    tampered[-1] ^= 1
    frames = [*mac_frames[:10], *stranger_frames, bytes(tampered), *mac_frames[10:],
              mac_frames[3]]
    one_by_one, batched = Party(identity=bob.identity), Party(identity=bob.identity)
    one_by_one.knows(alice, stranger)
    batched.knows(alice, stranger)
    expected = [reason_of(one_by_one.open(frame)) for frame in frames]
    split = SplitMap(threads=3)
    try:
        outcomes = batched.opener.open_many(frames, wall_ms=NOW_MS, now_unix_s=NOW_MS / 1000,
                                            parallel_map=split)
    finally:
        split.close()
    assert [reason_of(o) for o in outcomes] == expected
    assert expected.count(None) == 30  # the tampered frame and the repeat are refused
    assert Rejection.BAD_SIGNATURE in expected and Rejection.REPLAY in expected
    assert batched.opener.accepted_by_link_mac == 20 == one_by_one.opener.accepted_by_link_mac


def test_a_replayed_link_mac_frame_is_refused() -> None:
    alice, bob = _known_pair()
    frame = alice.seal(bob)
    assert isinstance(bob.open(frame), Envelope)
    assert reason_of(bob.open(frame)) is Rejection.REPLAY


# -- the runtime -----------------------------------------------------------------------


anyio_test = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Echo(BaseModel):
    value: int


def make_node(name: str, *, listen: str | None = None, **config: object) -> Node:
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name=name, public_key=identity.public_key, roles=["node"],
                                  not_after=int(time.time()) + 3600)
    if listen is not None:
        config["listen"] = listen
    return Node(config=NodeConfig(name=name, **config), identity=identity,
                certificate=certificate, authority_public_key=AUTHORITY.public_key)


def make_client(**config: object) -> Node:
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name="client", public_key=identity.public_key,
                                  roles=["node"], not_after=int(time.time()) + 3600)
    client = Node.client(config=NodeConfig(name="client", **config),
                         identity=identity, certificate=certificate,
                         authority_public_key=AUTHORITY.public_key)
    client.registry.register("test.echo", Echo)
    return client


def echo_on(node: Node) -> None:
    def answer(inbound: Inbound) -> None:
        (request,) = inbound.envelope.payloads
        assert isinstance(request, Echo)
        node.reply(inbound, "test.echo", Echo(value=request.value + 1))

    node.on("test.echo", Echo, answer)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def serving(node: Node) -> AsyncIterator[str]:
    async with node.running():
        assert node.address is not None
        yield node.address


@anyio_test
@pytest.mark.parametrize("link_macs", [True, False])
async def test_requests_to_an_address_switch_to_link_macs_once_it_has_answered(
    link_macs: bool,
) -> None:
    server = make_node("server", envelope={"link_macs": link_macs})
    echo_on(server)
    async with serving(server) as address:
        client = make_client(envelope={"link_macs": link_macs})
        async with client.running():
            for value in range(5):
                answer = await client.request(address, "test.echo", Echo(value=value))
                assert answer.payloads == (Echo(value=value + 1),)
                assert answer.link_mac is link_macs  # the server knows the client at once
        # The first request was signed (the address was not yet known to be the
        # server's), the later ones carried a link MAC when the setting is on.
        expected = 4 if link_macs else 0
        assert server.opener.accepted_by_link_mac == expected
        assert set(server.opener.rejected_by_name().values()) == {0}


@anyio_test
async def test_an_address_taken_over_by_another_node_is_answered_after_one_timeout() -> None:
    first = make_node("first")
    echo_on(first)
    client = make_client()
    async with client.running():
        async with serving(first) as address:
            await client.request(address, "test.echo", Echo(value=1))
            await client.request(address, "test.echo", Echo(value=2))
            assert first.opener.accepted_by_link_mac == 1
        # Another node, with another key, now listens at the same address.
        second = make_node("second", listen=address)
        echo_on(second)
        async with serving(second):
            # Addressed to the first node, the next request is refused there as not
            # meant for it; the client stops naming a recipient and is answered.
            with pytest.raises(RequestTimeout):
                await client.request(address, "test.echo", Echo(value=3), timeout_s=0.5)
            await until(lambda: second.opener.rejected_by_name()["replay"] == 1)
            answer = await client.request(address, "test.echo", Echo(value=4))
            assert answer.sender == second.node_id and answer.payloads == (Echo(value=5),)
            answer = await client.request(address, "test.echo", Echo(value=6))
            assert answer.link_mac and second.opener.accepted_by_link_mac == 1
