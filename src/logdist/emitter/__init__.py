"""Emitter side: the client library (:class:`EmitterClient`, block helpers) and the load generator."""

from logdist.emitter.client import EmitterClient, StreamStamper, build_block

__all__ = ["EmitterClient", "StreamStamper", "build_block"]
