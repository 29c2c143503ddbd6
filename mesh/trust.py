"""Who may speak: the set of senders holding a valid certificate from the cluster authority.

A sender becomes known when an envelope arrives carrying its certificate (hello,
request and response envelopes always carry one). Certificates are checked once
and cached by their signature; later envelopes without a certificate are matched
against the cached one, whose expiry is checked every time. The store is bounded:
the least recently used sender is forgotten first and must present its
certificate again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from mesh.errors import CertificateError
from mesh.identity import SIGNATURE_BYTES, Certificate

__all__ = ["SODIUM_VERIFY_BYTES_MAX", "TrustStore", "TrustedSender"]

SODIUM_VERIFY_BYTES_MAX = 32 * 1024
"""Signed data up to this size is verified with libsodium (PyNaCl), which takes
about half the time OpenSSL (cryptography) does for small messages; above it
libsodium's copy of the message makes OpenSSL the faster of the two."""


@dataclass(frozen=True, slots=True)
class TrustedSender:
    """A sender whose certificate the authority signed."""

    certificate: Certificate
    verifying_key: Ed25519PublicKey

    def signature_valid(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this sender's Ed25519 signature of ``data``."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        if len(data) <= SODIUM_VERIFY_BYTES_MAX:
            try:
                crypto_sign_open(signature + data, self.certificate.public_key)
            except BadSignatureError:
                return False
            return True
        try:
            self.verifying_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


class TrustStore:
    """Certified senders by node id, bounded to ``capacity`` entries (LRU)."""

    def __init__(self, authority_public_key: bytes, capacity: int) -> None:
        assert capacity > 0, capacity
        self.authority_public_key = authority_public_key
        self._capacity = capacity
        self._senders: OrderedDict[bytes, TrustedSender] = OrderedDict()

    def __len__(self) -> int:
        return len(self._senders)

    def get(self, node_id: bytes) -> TrustedSender | None:
        """The cached sender for ``node_id``, if any (expiry not checked)."""
        return self._senders.get(node_id)

    def add(self, certificate: Certificate, now_unix_s: float) -> TrustedSender:
        """Verify ``certificate`` and remember its holder; raises ``CertificateError``."""
        certificate.verify(self.authority_public_key, now_unix_s)
        sender = TrustedSender(
            certificate, Ed25519PublicKey.from_public_bytes(certificate.public_key)
        )
        self._senders[certificate.node_id] = sender
        self._senders.move_to_end(certificate.node_id)
        while len(self._senders) > self._capacity:
            self._senders.popitem(last=False)
        return sender

    def resolve(
        self, node_id: bytes, certificate_wire: Any, now_unix_s: float
    ) -> TrustedSender:
        """The certified sender of an envelope from ``node_id``.

        ``certificate_wire`` is the certificate the envelope carries, or None.
        Raises ``CertificateError`` when the sender is unknown, its certificate is
        invalid, expired, or belongs to another node.
        """
        known = self._senders.get(node_id)
        if certificate_wire is not None:
            certificate = Certificate.from_wire(certificate_wire)
            if certificate.node_id != node_id:
                raise CertificateError(
                    f"envelope from {node_id.hex()} carries the certificate of "
                    f"{certificate.node_id.hex()}"
                )
            if known is None or known.certificate.signature != certificate.signature:
                return self.add(certificate, now_unix_s)
        if known is None:
            raise CertificateError(f"sender {node_id.hex()} has presented no certificate")
        if now_unix_s > known.certificate.not_after:
            del self._senders[node_id]
            raise CertificateError(
                f"certificate of {known.certificate.name!r} expired at Unix time "
                f"{known.certificate.not_after}"
            )
        self._senders.move_to_end(node_id)
        return known
