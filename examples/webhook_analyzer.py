"""A webhook analyzer: an HTTP server that takes NDJSON batches from logdist and answers 200.

    python examples/webhook_analyzer.py --listen 127.0.0.1:8088 --out received.ndjson

Point the distributor at it with `--analyzer hook=http://127.0.0.1:8088/ingest@1`. Bodies may be gzip or
zstd encoded (Content-Encoding). Every line is appended to --out; a JSON ready line tells the bound port.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import signal

import zstandard
from aiohttp import web


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = open(args.out, "ab")  # noqa: SIM115 - open for the server's lifetime

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                body = reader.read()
        lines = [line for line in body.split(b"\n") if line]
        out.write(b"".join(line + b"\n" for line in lines))
        out.flush()
        return web.json_response({"received": len(lines)})

    async def probe(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/ingest", ingest)
    app.router.add_route("HEAD", "/ingest", probe)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    print(json.dumps({"event": "ready", "listen": f"{bound[0]}:{bound[1]}"}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    out.close()


if __name__ == "__main__":
    asyncio.run(main())
