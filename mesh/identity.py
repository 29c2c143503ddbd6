"""Node identity and admission: Ed25519 keys, node ids, authority-signed certificates.

A node id is the first 16 bytes of BLAKE2b-512 over the raw 32-byte Ed25519
public key, shown as 32 hex characters. A cluster authority (its own Ed25519 key)
signs a certificate per node binding name, node id, public key, roles and an
expiry; a node accepts messages only from senders holding such a certificate.

Private keys are PKCS#8 PEM files created with mode 0600. Loading refuses a key
file that other users could read or write: a leaked node key lets anyone speak
for that node until its certificate expires.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from mesh.codec import pack
from mesh.errors import CertificateError, IdentityError, KeyPermissionError

__all__ = [
    "NODE_ID_BYTES",
    "SIGNATURE_BYTES",
    "SODIUM_SIGN_BYTES_MAX",
    "Certificate",
    "ClusterAuthority",
    "Identity",
    "node_id_of",
    "read_certificate",
    "read_private_key",
    "read_public_key",
    "validate_roles",
    "write_certificate",
    "write_private_key",
    "write_public_key",
]

NODE_ID_BYTES = 16
SODIUM_SIGN_BYTES_MAX = 8 * 1024
"""Data up to this size is signed with libsodium (PyNaCl), about a third faster
than OpenSSL (cryptography) for small messages; larger data is signed with
OpenSSL, which does not copy it first."""
SIGNATURE_BYTES = 64
"""An Ed25519 signature's length."""
_CERT_DOMAIN = "agentmesh-cert/1"
_ROLE_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


def node_id_of(public_key: bytes) -> bytes:
    """Node id of a raw Ed25519 public key: the first 16 bytes of BLAKE2b-512."""
    if len(public_key) != 32:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    return hashlib.blake2b(public_key).digest()[:NODE_ID_BYTES]


def _sodium_secret_key(private_key: Ed25519PrivateKey) -> bytes:
    _, secret = crypto_sign_seed_keypair(private_key.private_bytes_raw())
    return secret


def validate_roles(roles: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return ``roles`` as a sorted, deduplicated tuple, refusing malformed names."""
    for role in roles:
        if not _ROLE_PATTERN.match(role):
            raise IdentityError(
                f"role {role!r} is invalid: use 1-32 characters of a-z, 0-9, '_', '.', '-', "
                "starting with a letter"
            )
    return tuple(sorted(set(roles)))


@dataclass(frozen=True, slots=True)
class Identity:
    """An Ed25519 key pair and the node id derived from it."""

    private_key: Ed25519PrivateKey = field(repr=False)
    public_key: bytes
    node_id: bytes
    sodium_secret_key: bytes = field(repr=False, default=b"")
    """The same key in libsodium's form (seed and public key), for ``sign``."""

    @classmethod
    def generate(cls) -> Identity:
        """Create a new random identity."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> Identity:
        """Wrap an existing private key."""
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key=private_key, public_key=public, node_id=node_id_of(public),
                   sodium_secret_key=_sodium_secret_key(private_key))

    def sodium_key(self) -> bytes:
        """The key in libsodium's form (seed and public key), derived if not held."""
        return self.sodium_secret_key or _sodium_secret_key(self.private_key)

    @property
    def node_id_hex(self) -> str:
        """The node id as 32 lowercase hex characters."""
        return self.node_id.hex()

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``data``.

        Ed25519 signatures are deterministic, so either library gives the same
        bytes: libsodium is the faster for small data, OpenSSL for large.
        """
        if len(data) <= SODIUM_SIGN_BYTES_MAX and self.sodium_secret_key:
            return crypto_sign(data, self.sodium_secret_key)[:SIGNATURE_BYTES]
        return self.private_key.sign(data)


@dataclass(frozen=True, slots=True)
class Certificate:
    """An authority's statement that ``public_key`` belongs to node ``name`` with ``roles``.

    ``not_after`` is a Unix time in seconds; ``issuer`` is the authority's node id.
    """

    name: str
    node_id: bytes
    public_key: bytes
    roles: tuple[str, ...]
    not_after: int
    issuer: bytes
    signature: bytes = b""

    def signed_part(self) -> bytes:
        """The canonical bytes the authority signs."""
        return pack(
            [
                _CERT_DOMAIN,
                self.name,
                self.node_id,
                self.public_key,
                list(self.roles),
                self.not_after,
                self.issuer,
            ]
        )

    def to_wire(self) -> list[Any]:
        """A msgpack-ready positional form, as carried in envelopes."""
        return [
            self.name,
            self.node_id,
            self.public_key,
            list(self.roles),
            self.not_after,
            self.issuer,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, item: Any) -> Certificate:
        """Parse the positional form; raises ``CertificateError`` on any shape error."""
        if not isinstance(item, list) or len(item) != 7:
            raise CertificateError("a certificate is a list of 7 fields")
        name, node_id, public_key, roles, not_after, issuer, signature = item
        if not (
            isinstance(name, str)
            and isinstance(node_id, bytes)
            and isinstance(public_key, bytes)
            and isinstance(roles, list)
            and all(isinstance(r, str) for r in roles)
            and isinstance(not_after, int)
            and isinstance(issuer, bytes)
            and isinstance(signature, bytes)
        ):
            raise CertificateError("a certificate field has the wrong type")
        return cls(name, node_id, public_key, tuple(roles), not_after, issuer, signature)

    def verify(self, authority_public_key: bytes, now_unix_s: float) -> None:
        """Check signature, key-to-id binding and expiry; raise ``CertificateError``."""
        if len(self.public_key) != 32 or node_id_of(self.public_key) != self.node_id:
            raise CertificateError(
                f"certificate for {self.name!r}: node id {self.node_id.hex()} does not "
                "match its public key"
            )
        if node_id_of(authority_public_key) != self.issuer:
            raise CertificateError(
                f"certificate for {self.name!r} was issued by {self.issuer.hex()}, "
                f"not by this cluster's authority {node_id_of(authority_public_key).hex()}"
            )
        try:
            Ed25519PublicKey.from_public_bytes(authority_public_key).verify(
                self.signature, self.signed_part()
            )
        except InvalidSignature:
            raise CertificateError(
                f"certificate for {self.name!r} has an invalid authority signature"
            ) from None
        if now_unix_s > self.not_after:
            raise CertificateError(
                f"certificate for {self.name!r} expired at Unix time {self.not_after}"
            )

    def to_json(self) -> dict[str, Any]:
        """A readable JSON form for files and status output."""
        return {
            "name": self.name,
            "node_id": self.node_id.hex(),
            "public_key": self.public_key.hex(),
            "roles": list(self.roles),
            "not_after": self.not_after,
            "issuer": self.issuer.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Certificate:
        """Parse the JSON form; raises ``CertificateError`` on missing or bad fields."""
        try:
            return cls(
                name=str(data["name"]),
                node_id=bytes.fromhex(data["node_id"]),
                public_key=bytes.fromhex(data["public_key"]),
                roles=tuple(str(r) for r in data["roles"]),
                not_after=int(data["not_after"]),
                issuer=bytes.fromhex(data["issuer"]),
                signature=bytes.fromhex(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CertificateError(f"certificate JSON is malformed: {exc!r}") from exc


class ClusterAuthority:
    """The key that admits nodes to a cluster by signing their certificates."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    @property
    def public_key(self) -> bytes:
        """The authority's raw public key, which every node trusts."""
        return self.identity.public_key

    def issue(
        self,
        *,
        name: str,
        public_key: bytes,
        roles: tuple[str, ...] | list[str],
        not_after: int,
    ) -> Certificate:
        """Sign a certificate for ``public_key``."""
        if not name or len(name) > 64:
            raise IdentityError(f"node name {name!r} must have 1 to 64 characters")
        unsigned = Certificate(
            name=name,
            node_id=node_id_of(public_key),
            public_key=public_key,
            roles=validate_roles(roles),
            not_after=not_after,
            issuer=self.identity.node_id,
        )
        signature = self.identity.sign(unsigned.signed_part())
        return Certificate(
            unsigned.name,
            unsigned.node_id,
            unsigned.public_key,
            unsigned.roles,
            unsigned.not_after,
            unsigned.issuer,
            signature,
        )


def write_private_key(path: Path, identity: Identity) -> None:
    """Write ``identity``'s private key as PEM, readable by the owner only.

    Refuses to overwrite an existing file: a node's key is its identity.
    """
    pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"key file {path} already exists; refusing to overwrite it") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private_key(path: Path) -> Identity:
    """Load a private key, refusing files that others can read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"key file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}: other users can access it; "
            f"run 'chmod 600 {path}' if it has not leaked, or create a new key"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity.from_private_key(key)


def write_public_key(path: Path, public_key: bytes) -> None:
    """Write a raw public key as one line of hex."""
    path.write_text(public_key.hex() + "\n", encoding="ascii")


def read_public_key(path: Path) -> bytes:
    """Read a public key written by ``write_public_key``."""
    try:
        raw = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise IdentityError(f"public key file {path} does not exist") from None
    except ValueError as exc:
        raise IdentityError(f"public key file {path} is not hex") from exc
    if len(raw) != 32:
        raise IdentityError(f"public key file {path} holds {len(raw)} bytes, not 32")
    return raw


def write_certificate(path: Path, cert: Certificate) -> None:
    """Write a certificate as indented JSON."""
    path.write_text(json.dumps(cert.to_json(), indent=2) + "\n", encoding="utf-8")


def read_certificate(path: Path) -> Certificate:
    """Read a certificate written by ``write_certificate``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityError(f"certificate file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise CertificateError(f"certificate file {path} is not JSON: {exc}") from exc
    return Certificate.from_json(data)
