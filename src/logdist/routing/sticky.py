"""Sticky routing: weighted rendezvous (highest random weight) hashing of keys onto analyzers.

Each (key, analyzer) pair gets a stable uniform ``h`` in (0, 1) and the score ``-w / ln(h)``; the key
goes to the highest score.  Analyzer ``i`` wins a key with probability ``w_i / sum(w)``; removing an
analyzer moves only its own keys, and adding one moves keys only onto it.

``h(key, name) = mix64(blake2b64(key) ^ salt(name))``: the salt is a cached, personalised blake2b64 of
the name and ``mix64`` the SplitMix64 finaliser, so :func:`pick_many` hashes each key once and scores
every analyzer with numpy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from functools import lru_cache

import msgspec
import numpy as np

from logdist.routing.rules import check_sticky_key
from logdist.wire.batch import MessageBlock

_attr_decoder = msgspec.msgpack.Decoder(dict[str, str])


def key_hashes(keys: Sequence[bytes]) -> np.ndarray:
    """The 64-bit hash (blake2b, little-endian) of each key, as uint64."""
    blake2b = hashlib.blake2b
    return np.frombuffer(b"".join([blake2b(k, digest_size=8).digest() for k in keys]), dtype="<u8").astype(np.uint64)


@lru_cache(maxsize=4096)
def _salt(name: str) -> int:
    """The per-analyzer salt (cached)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"logdist-sticky").digest()
    return int.from_bytes(digest, "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _checked(names: Sequence[str], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Salts and weights as arrays; raise ValueError unless some analyzer has a positive weight."""
    if len(names) != len(weights):
        raise ValueError(f"{len(names)} names but {len(weights)} weights")
    if len(set(names)) != len(names):
        raise ValueError(f"analyzer names must be unique, got {list(names)!r}")
    w = np.array([float(x) for x in weights], dtype=np.float64)
    for name, value in zip(names, w.tolist(), strict=True):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {name!r} must be finite and >= 0, got {value!r}")
    if not len(w) or not (w > 0).any():
        raise ValueError("sticky routing needs at least one analyzer with a positive weight")
    salts = np.array([_salt(name) for name in names], dtype=np.uint64)
    return salts, w


def pick_hashed(hashes: np.ndarray, names: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Analyzer index (intp) per 64-bit key hash; analyzers of weight 0 are never picked."""
    salts, w = _checked(names, weights)
    hashes = np.asarray(hashes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _mix(hashes[:, None] ^ salts[None, :])
    h = ((mixed >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))  # uniform, strictly in (0, 1)
    scores = -w / np.log(h)
    scores[:, w <= 0] = -np.inf
    return np.argmax(scores, axis=1)


def pick_many(keys: Sequence[bytes], names: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Analyzer index (intp) for each key; ``pick_many(keys, ...)[i] == pick(keys[i], ...)``."""
    return pick_hashed(key_hashes(keys), names, weights)


def pick(key: bytes, names: Sequence[str], weights: Sequence[float]) -> int:
    """Index of the analyzer ``key`` goes to (weights >= 0, at least one > 0)."""
    return int(pick_many([key], names, weights)[0])


def sticky_keys(block: MessageBlock, key: str) -> list[bytes]:
    """Each message's sticky key: ``stream`` -> the stream id (8 bytes, little-endian); ``source`` or
    ``attributes.NAME`` -> that attribute's UTF-8 value (b"" when missing or unreadable)."""
    check_sticky_key(key)
    if not block.count:
        return []
    array = block.array
    if key == "stream":
        raw = array["stream"].astype("<u8").tobytes()
        return [raw[i : i + 8] for i in range(0, len(raw), 8)]
    attribute = "source" if key == "source" else key[len("attributes.") :]
    bodies = memoryview(block.bodies)
    starts = block.offsets[:-1].tolist()
    out: list[bytes] = []
    for start, attr_len in zip(starts, array["attr_len"].tolist(), strict=True):
        value = b""
        if attr_len:
            try:
                found = _attr_decoder.decode(bodies[start : start + attr_len]).get(attribute)
            except (msgspec.DecodeError, UnicodeDecodeError):
                found = None
            if found is not None:
                value = found.encode("utf-8")
        out.append(value)
    return out
