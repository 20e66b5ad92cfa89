"""Batch compression codecs (zstd, lz4) with a bound on the decompressed size."""

from __future__ import annotations

import lz4.frame
import zstandard

from logdist.wire.errors import ErrorCode, ProtocolError

CODEC_IDS: dict[str | None, int] = {None: 0, "zstd": 1, "lz4": 2}
CODEC_NAMES: dict[int, str] = {1: "zstd", 2: "lz4"}
SUPPORTED = ("zstd", "lz4")

_zstd_compressor = zstandard.ZstdCompressor(level=3)


def compress(codec: str, data: bytes) -> bytes:
    """Compress ``data`` with ``codec`` ("zstd" or "lz4")."""
    if codec == "zstd":
        return _zstd_compressor.compress(data)
    if codec == "lz4":
        return lz4.frame.compress(data)
    raise ValueError(f"unknown compression codec {codec!r}")


def decompress(codec: str, data: bytes, max_size: int) -> bytes:
    """Decompress ``data``; refuse output larger than ``max_size`` (a decompression bomb)."""
    try:
        if codec == "zstd":
            dctx = zstandard.ZstdDecompressor()
            size = zstandard.get_frame_parameters(data).content_size
            if size == zstandard.CONTENTSIZE_UNKNOWN:  # a streamed frame: bound its output first
                with dctx.stream_reader(data) as reader:
                    size = len(reader.read(max_size + 1))
            if size > max_size:
                raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"zstd data decompresses to more than {max_size} bytes")
            # exactly one whole frame: a truncated frame or bytes after it raise ZstdError
            out = dctx.decompress(data, max_output_size=max_size, allow_extra_data=False)
        else:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            out = decompressor.decompress(data, max_length=max_size + 1)
            if len(out) <= max_size and (not decompressor.eof or decompressor.unused_data):
                raise ProtocolError(ErrorCode.BAD_BATCH, "lz4 data is truncated or followed by stray bytes")
    except (zstandard.ZstdError, RuntimeError, ValueError, OSError) as exc:
        raise ProtocolError(ErrorCode.BAD_BATCH, f"{codec} data does not decompress: {exc}") from None
    if len(out) > max_size:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"{codec} data decompresses to more than {max_size} bytes")
    return out


def negotiate(offered: list[str], accepted: tuple[str, ...]) -> str | None:
    """The first codec the client offered that the server accepts, or None."""
    for name in offered:
        if name in accepted:
            return name
    return None
