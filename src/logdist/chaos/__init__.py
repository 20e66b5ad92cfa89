"""Fault injection for tests and demos: a TCP proxy that adds latency, caps bandwidth, resets, partitions,
corrupts and stalls connections on command (``logdist chaos`` runs it as a process with a control API).
"""

from logdist.chaos.proxy import ChaosProxy, Direction

__all__ = ["ChaosProxy", "Direction"]
