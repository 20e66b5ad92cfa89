"""Durable spool: per-queue FIFOs of message blocks that survive crashes (LMDB, one writer thread).

See :class:`Spool` for the API and :mod:`logdist.spool.store` for the on-disk layout and threading model.
"""

from logdist.spool.store import FsyncPolicy, Spool, SpoolError, SpoolFull

__all__ = ["FsyncPolicy", "Spool", "SpoolError", "SpoolFull"]
