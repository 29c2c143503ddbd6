"""Operating errors of agentmesh, all under one root.

A bug is an ``assert``; an operating error (bad configuration, a key file with
the wrong mode, an unreachable node) is one of these, with a message that names
the value at fault. A misbehaving peer is never raised: it is counted and dropped
at the envelope boundary (see ``mesh.envelope.Rejection``).
"""

from __future__ import annotations

__all__ = [
    "CertificateError",
    "ClusterError",
    "CodecError",
    "ConfigError",
    "IdentityError",
    "KeyPermissionError",
    "MeshError",
    "MessageTooLarge",
    "Overloaded",
    "RequestTimeout",
    "TransportError",
    "exception_leaves",
]


class MeshError(Exception):
    """Root of every operating error agentmesh raises."""


class ConfigError(MeshError):
    """A configuration file or value is invalid."""


class IdentityError(MeshError):
    """A key or certificate file is missing, unreadable or inconsistent."""


class KeyPermissionError(IdentityError):
    """A private key file is readable or writable by users other than its owner."""


class CertificateError(IdentityError):
    """A certificate is not signed by the authority, has expired, or does not match its key."""


class CodecError(MeshError):
    """Bytes could not be decoded into the expected msgpack structure."""


class TransportError(MeshError):
    """A socket could not be bound or used."""


class RequestTimeout(MeshError):
    """A request to a node got no answer before its deadline."""


class MessageTooLarge(MeshError):
    """A payload does not fit in one envelope of ``envelope_size_bytes_max`` bytes."""


class Overloaded(MeshError):
    """A bounded queue or table is full; the operation was refused rather than queued."""


class ClusterError(MeshError):
    """A local cluster directory is missing, incomplete or inconsistent."""


def exception_leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error`` in order, nested exception groups (from task
    groups) flattened; ``[error]`` for an exception that is not a group."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in exception_leaves(inner)]
    return [error]
