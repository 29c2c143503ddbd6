"""Identities, certificates, key files and the trust store."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from mesh.errors import CertificateError, IdentityError, KeyPermissionError
from mesh.identity import (
    SODIUM_SIGN_BYTES_MAX,
    Certificate,
    ClusterAuthority,
    Identity,
    node_id_of,
    read_certificate,
    read_private_key,
    write_certificate,
    write_private_key,
)
from mesh.trust import TrustStore

NOW = 1_800_000_000
AUTHORITY = ClusterAuthority(Identity.generate())


def certify(identity: Identity, *, roles: tuple[str, ...] = ("node",),
            not_after: int = NOW + 3600, name: str = "n1") -> Certificate:
    return AUTHORITY.issue(name=name, public_key=identity.public_key, roles=roles,
                           not_after=not_after)


def test_node_id_is_the_first_16_bytes_of_blake2b_of_the_public_key() -> None:
    identity = Identity.generate()
    assert identity.node_id == hashlib.blake2b(identity.public_key).digest()[:16]
    assert identity.node_id == node_id_of(identity.public_key)
    assert identity.node_id_hex == identity.node_id.hex() and len(identity.node_id_hex) == 32


def test_certificates_round_trip_through_wire_and_json_and_verify() -> None:
    certificate = certify(Identity.generate(), roles=("node", "voter"))
    assert Certificate.from_wire(certificate.to_wire()) == certificate
    assert Certificate.from_json(certificate.to_json()) == certificate
    certificate.verify(AUTHORITY.public_key, NOW)


@pytest.mark.parametrize(("change", "message"), [
    ({"roles": ("node", "admin")}, "invalid authority signature"),
    ({"name": "mallory"}, "invalid authority signature"),
    ({"not_after": NOW + 10**6}, "invalid authority signature"),
    ({"node_id": bytes(16)}, "does not match its public key"),
    ({"issuer": bytes(16)}, "not by this cluster's authority"),
])
def test_any_altered_certificate_field_fails_verification(change: dict[str, object],
                                                          message: str) -> None:
    altered = replace(certify(Identity.generate()), **change)  # type: ignore[arg-type]
    with pytest.raises(CertificateError, match=message):
        altered.verify(AUTHORITY.public_key, NOW)


def test_an_expired_certificate_fails_verification() -> None:
    with pytest.raises(CertificateError, match="expired"):
        certify(Identity.generate(), not_after=NOW - 1).verify(AUTHORITY.public_key, NOW)


@pytest.mark.parametrize("wire", [None, [], ["n"] * 7, [1, b"", b"", [], 0, b"", b""]])
def test_malformed_certificate_wire_forms_raise_certificate_error(wire: object) -> None:
    with pytest.raises(CertificateError):
        Certificate.from_wire(wire)


def test_roles_and_names_are_validated_at_issue() -> None:
    with pytest.raises(IdentityError):
        certify(Identity.generate(), roles=("Not A Role",))
    with pytest.raises(IdentityError, match="1 to 64 characters"):
        certify(Identity.generate(), name="")


def test_private_keys_are_written_0600_and_read_back(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "node.key"
    write_private_key(path, identity)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_private_key(path).node_id == identity.node_id
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        write_private_key(path, Identity.generate())


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o606])
def test_keys_others_can_access_are_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    write_private_key(path, Identity.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyPermissionError, match=f"mode {mode:04o}.*chmod 600"):
        read_private_key(path)


def test_missing_or_garbled_key_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        read_private_key(tmp_path / "absent.key")
    garbled = tmp_path / "garbled.key"
    garbled.write_bytes(b"not a key")
    garbled.chmod(0o600)
    with pytest.raises(IdentityError, match="not an unencrypted PEM"):
        read_private_key(garbled)


def test_certificate_files_round_trip_and_bad_json_is_named(tmp_path: Path) -> None:
    certificate = certify(Identity.generate())
    path = tmp_path / "node.cert"
    write_certificate(path, certificate)
    assert read_certificate(path) == certificate
    path.write_text("{", encoding="utf-8")
    with pytest.raises(CertificateError, match="not JSON"):
        read_certificate(path)


def test_trust_store_forgets_the_least_recently_heard_sender_first() -> None:
    store = TrustStore(AUTHORITY.public_key, capacity=2)
    first, second, third = (certify(Identity.generate()) for _ in range(3))
    store.add(first, NOW)
    store.add(second, NOW)
    store.resolve(first.node_id, None, NOW)  # first heard again: second is now oldest
    store.add(third, NOW)
    assert store.get(second.node_id) is None
    assert store.get(first.node_id) is not None and store.get(third.node_id) is not None
    with pytest.raises(CertificateError, match="presented no certificate"):
        store.resolve(second.node_id, None, NOW)
    assert store.resolve(second.node_id, second.to_wire(), NOW).certificate == second


def test_trust_store_drops_a_sender_whose_certificate_expired() -> None:
    store = TrustStore(AUTHORITY.public_key, capacity=4)
    certificate = certify(Identity.generate(), not_after=NOW + 10)
    store.add(certificate, NOW)
    with pytest.raises(CertificateError, match="expired"):
        store.resolve(certificate.node_id, None, NOW + 11)
    assert store.get(certificate.node_id) is None


@pytest.mark.parametrize(
    "size", [0, 1, 300, SODIUM_SIGN_BYTES_MAX, SODIUM_SIGN_BYTES_MAX + 1, 100_000]
)
def test_signatures_are_the_same_whichever_library_makes_them(size: int) -> None:
    # Small data is signed by libsodium, large by OpenSSL; Ed25519 is deterministic,
    # so both must give OpenSSL's bytes, and they verify under the public key.
    identity = Identity.generate()
    data = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    signature = identity.sign(data)
    assert signature == identity.private_key.sign(data)
    identity.private_key.public_key().verify(signature, data)
