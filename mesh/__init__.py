"""agentmesh's node layer: identity, signed envelopes, ZeroMQ transport, runtime, CLI."""

__all__ = ["__version__"]

__version__ = "0.1.0"
