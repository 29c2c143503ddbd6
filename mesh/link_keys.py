"""Link keys: a shared secret per pair of certified nodes, for MACs in place of signatures.

An envelope addressed to one node whose certificate the sender holds is
authenticated with a keyed BLAKE2b tag instead of an Ed25519 signature: about
2 us to make or check against 40 us to sign and 100 us to verify here, on
each of the four hops of a replicated write (docs/DECISIONS.md, "Envelopes
between two known nodes carry a MAC").

The key needs no handshake and no state that a restart could lose. Both nodes
turn their Ed25519 keys into X25519 keys (the same curve, as libsodium does),
and each computes the same Diffie-Hellman secret from its own private key and
the other's certified public key. Only those two nodes can. The key for
frames from A to B is BLAKE2b keyed with that secret over A's id then B's id,
so a frame cannot be reflected back to its sender as the other direction's.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from nacl.bindings import (
    crypto_scalarmult,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError

from mesh.identity import SIGNATURE_BYTES, Identity
from mesh.trust import TrustStore

__all__ = ["LINK_MAC_BYTES", "LinkKeys", "link_mac", "link_mac_valid"]

LINK_MAC_BYTES = SIGNATURE_BYTES
"""A link MAC takes a signature's place and its length: the frame's layout stays one."""
_KEY_PERSON = b"agentmesh-link/1"
_MAC_PERSON = b"agentmesh-env/3"


def link_mac(key: bytes, signed: bytes) -> bytes:
    """The tag over ``signed`` (every byte of the frame before it) under a link key."""
    return hashlib.blake2b(signed, key=key, digest_size=LINK_MAC_BYTES, person=_MAC_PERSON).digest()


def link_mac_valid(key: bytes, signed: bytes, tag: bytes) -> bool:
    """Whether ``tag`` is the link MAC of ``signed`` under ``key`` (constant time)."""
    return hmac.compare_digest(link_mac(key, signed), tag)


class LinkKeys:
    """The link keys of one node with each peer, derived on first use and cached.

    The cache holds at most ``capacity`` peers (the first derived goes first: a
    peer evicted and heard from again costs one derivation, about 60 us) and
    is checked against the peer's public key, so a key the peer no longer
    holds is never used.
    """

    def __init__(self, identity: Identity, trust: TrustStore, capacity: int) -> None:
        assert capacity > 0, capacity
        self._node_id = identity.node_id
        self._secret = crypto_sign_ed25519_sk_to_curve25519(identity.sodium_key())
        self._trust = trust
        self._capacity = capacity
        # node id -> (its public key, key of our frames to it, key of its frames to us)
        self._keys: OrderedDict[bytes, tuple[bytes, bytes, bytes]] = OrderedDict()
        self.unusable_keys = 0
        """Peers whose public key gave no secret (not a valid curve point): signed to."""

    def sending_key(self, recipient: bytes) -> bytes | None:
        """The key for our frames to ``recipient``; None while we hold no certificate
        of it (the frame is then signed)."""
        trusted = self._trust.get(recipient)
        if trusted is None:
            return None
        keys = self._keys_for(recipient, trusted.certificate.public_key)
        return None if keys is None else keys[1]

    def receiving_key(self, sender: bytes, public_key: bytes) -> bytes | None:
        """The key of ``sender``'s frames to us, given its certified ``public_key``."""
        keys = self._keys_for(sender, public_key)
        return None if keys is None else keys[2]

    def _keys_for(self, peer: bytes, public_key: bytes) -> tuple[bytes, bytes, bytes] | None:
        cached = self._keys.get(peer)
        if cached is not None and cached[0] == public_key:
            return cached
        try:
            shared = crypto_scalarmult(
                self._secret, crypto_sign_ed25519_pk_to_curve25519(public_key)
            )
        except CryptoError:  # a low-order or invalid point: no secret to share
            self.unusable_keys += 1
            return None
        keys = (
            public_key,
            _directed_key(shared, self._node_id, peer),
            _directed_key(shared, peer, self._node_id),
        )
        self._keys[peer] = keys
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return keys


def _directed_key(shared: bytes, sender: bytes, recipient: bytes) -> bytes:
    return hashlib.blake2b(sender + recipient, key=shared, digest_size=32,
                           person=_KEY_PERSON).digest()
