"""Re-export of ``consensus.hlc`` (the clock lives in the bottom layer, with the CRDTs)."""

from consensus.hlc import LOGICAL_BITS, HybridClock, make_timestamp, wall_ms_of

__all__ = ["LOGICAL_BITS", "HybridClock", "make_timestamp", "wall_ms_of"]
