"""Where things live on disk: authority, node and cluster directories.

An authority directory holds ``authority.key`` (0600) and ``authority.pub``, plus
``client/``, the identity the CLI speaks with. A node directory holds
``node.key`` (0600), ``node.cert``, ``authority.pub`` (the authority it trusts),
an optional ``node.toml`` and, while the node runs, ``run.json``. A cluster
directory made by ``agentmesh up`` is an authority directory with one node
directory per node and ``cluster.json`` listing them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.config import CONFIG_FILE_NAME
from mesh.errors import ClusterError, IdentityError
from mesh.identity import (
    Certificate,
    ClusterAuthority,
    Identity,
    read_certificate,
    read_private_key,
    read_public_key,
    write_certificate,
    write_private_key,
    write_public_key,
)

__all__ = [
    "AUTHORITY_KEY",
    "AUTHORITY_PUB",
    "CLIENT_DIR",
    "CLUSTER_FILE",
    "NODE_CERT",
    "NODE_KEY",
    "NodeFiles",
    "create_node_identity",
    "init_authority",
    "load_authority",
    "load_node_files",
    "read_cluster_file",
    "write_cluster_file",
]

AUTHORITY_KEY = "authority.key"
AUTHORITY_PUB = "authority.pub"
NODE_KEY = "node.key"
NODE_CERT = "node.cert"
CLIENT_DIR = "client"
CLUSTER_FILE = "cluster.json"
DEFAULT_VALID_DAYS = 365


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """A node's identity as loaded from its directory, already checked against the authority."""

    identity: Identity
    certificate: Certificate
    authority_public_key: bytes


def init_authority(directory: Path) -> tuple[ClusterAuthority, bool]:
    """Create an authority (and its CLI client identity) in ``directory`` unless present.

    Returns the authority and whether it was created now.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / AUTHORITY_KEY
    created = not key_path.exists()
    if created:
        identity = Identity.generate()
        write_private_key(key_path, identity)
        write_public_key(directory / AUTHORITY_PUB, identity.public_key)
    authority = load_authority(directory)
    client_dir = directory / CLIENT_DIR
    if not (client_dir / NODE_KEY).exists():
        create_node_identity(client_dir, authority, name="cli", roles=["client"])
    return authority, created


def load_authority(directory: Path) -> ClusterAuthority:
    """Load the authority key from ``directory``."""
    key_path = directory / AUTHORITY_KEY
    if not key_path.exists():
        raise IdentityError(
            f"no authority in {directory} (missing {AUTHORITY_KEY}); "
            f"create one with 'agentmesh ca init --dir {directory}'"
        )
    return ClusterAuthority(read_private_key(key_path))


def create_node_identity(
    node_dir: Path,
    authority: ClusterAuthority,
    *,
    name: str,
    roles: list[str],
    valid_days: int = DEFAULT_VALID_DAYS,
) -> Certificate:
    """Create a key, a certificate and the authority's public key in ``node_dir``.

    An existing key is kept (a node's key is its identity) and re-certified.
    """
    if valid_days < 1:
        raise IdentityError(f"valid_days ({valid_days}) must be at least 1")
    node_dir.mkdir(parents=True, exist_ok=True)
    key_path = node_dir / NODE_KEY
    if key_path.exists():
        identity = read_private_key(key_path)
    else:
        identity = Identity.generate()
        write_private_key(key_path, identity)
    certificate = authority.issue(
        name=name,
        public_key=identity.public_key,
        roles=roles,
        not_after=int(time.time()) + valid_days * 86_400,
    )
    write_certificate(node_dir / NODE_CERT, certificate)
    write_public_key(node_dir / AUTHORITY_PUB, authority.public_key)
    return certificate


def load_node_files(node_dir: Path) -> NodeFiles:
    """Load and cross-check a node directory's key, certificate and authority key."""
    if not node_dir.is_dir():
        raise IdentityError(f"node directory {node_dir} does not exist")
    identity = read_private_key(node_dir / NODE_KEY)
    certificate = read_certificate(node_dir / NODE_CERT)
    authority_public_key = read_public_key(node_dir / AUTHORITY_PUB)
    if certificate.node_id != identity.node_id:
        raise IdentityError(
            f"{node_dir / NODE_CERT} certifies node {certificate.node_id.hex()}, but "
            f"{node_dir / NODE_KEY} is the key of node {identity.node_id_hex}"
        )
    certificate.verify(authority_public_key, time.time())
    return NodeFiles(identity, certificate, authority_public_key)


def write_cluster_file(directory: Path, nodes: list[dict[str, Any]]) -> Path:
    """Write ``cluster.json`` atomically."""
    path = directory / CLUSTER_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"nodes": nodes}, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def read_cluster_file(directory: Path) -> list[dict[str, Any]]:
    """The nodes listed in ``directory/cluster.json``."""
    path = directory / CLUSTER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClusterError(
            f"no {CLUSTER_FILE} in {directory}; start a cluster with "
            f"'agentmesh up --dir {directory}'"
        ) from None
    except json.JSONDecodeError as exc:
        raise ClusterError(f"{path} is not valid JSON: {exc}") from exc
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not all(
        isinstance(n, dict) and {"name", "node_id", "listen"} <= n.keys() for n in nodes
    ):
        raise ClusterError(f"{path} must hold {{'nodes': [{{name, node_id, listen, ...}}]}}")
    return nodes


def config_path(node_dir: Path) -> Path:
    """The node's configuration file."""
    return node_dir / CONFIG_FILE_NAME
