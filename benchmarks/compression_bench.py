"""CPU cost vs bytes saved of batch compression on realistic log lines (the load generator's payloads).

    .venv/bin/python benchmarks/compression_bench.py --out benchmarks/compression.json

For each codec and batch size: compression ratio, compress and decompress CPU per message (one core), and the
break-even link speed below which compressing saves more wire time than it costs CPU time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from logdist.emitter.loadgen import PayloadPool
from logdist.wire.compression import compress, decompress


def measure(codec: str, data: bytes, messages: int, repeat: int = 20) -> dict[str, float]:
    packed = compress(codec, data)
    start = time.process_time()
    for _ in range(repeat):
        compress(codec, data)
    c_s = (time.process_time() - start) / repeat
    start = time.process_time()
    for _ in range(repeat):
        decompress(codec, packed, len(data) + 1)
    d_s = (time.process_time() - start) / repeat
    saved = len(data) - len(packed)
    return {
        "ratio": round(len(data) / len(packed), 2),
        "bytes_per_msg_raw": round(len(data) / messages, 1),
        "bytes_per_msg_compressed": round(len(packed) / messages, 1),
        "compress_ns_per_msg": round(c_s / messages * 1e9),
        "decompress_ns_per_msg": round(d_s / messages * 1e9),
        # below this link speed, the wire time saved exceeds the CPU time spent (both ends)
        "break_even_mbit_s": round(saved * 8 / (c_s + d_s) / 1e6) if c_s + d_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    results = []
    for batch in (100, 1000, 4096):
        pool = PayloadPool(args.size, batch)
        block = pool.block(0, batch, stream=1, first_seq=0, ts_ns=time.time_ns())
        data = block.encode()
        for codec in ("lz4", "zstd"):
            results.append({"codec": codec, "batch": batch, **measure(codec, data, batch)})
    report = {
        "command": "benchmarks/compression_bench.py " + (f"--size {args.size}"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
        "message_size": args.size,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
