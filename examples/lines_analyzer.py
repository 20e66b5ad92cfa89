"""A lines analyzer: a TCP server that reads NDJSON messages from logdist (no acks, at-most-once).

    python examples/lines_analyzer.py --listen 127.0.0.1:9009 --out received.ndjson

Point the distributor at it with `--analyzer raw=lines://127.0.0.1:9009@1`. Each line is one message:
{"id": "STREAM:SEQ", "ts_ns": ..., "severity": ..., "message": "..." (or "message_b64"), "attributes": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = open(args.out, "ab")  # noqa: SIM115 - open for the server's lifetime

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            out.write(line)
        out.flush()
        writer.close()

    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(handle, host, int(port), limit=16 * 1024 * 1024)
    bound = server.sockets[0].getsockname()
    print(json.dumps({"event": "ready", "listen": f"{bound[0]}:{bound[1]}"}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    out.close()


if __name__ == "__main__":
    asyncio.run(main())
