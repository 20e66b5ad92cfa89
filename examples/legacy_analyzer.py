"""An analyzer in the original Go system's protocol: dials the distributor, announces a weight, acks every 10.

    python examples/legacy_analyzer.py --connect 127.0.0.1:7402 --weight 0.25 --out received.ndjson
    python examples/legacy_analyzer.py --listen 127.0.0.1:9011 --out received.ndjson

With --connect it dials a distributor started with `logdist serve --legacy-analyzers 127.0.0.1:7402 ...` and
announces its weight; with --listen it waits for a distributor configured with
`--analyzer old=legacy://127.0.0.1:9011@0.25` (the weight then comes from the distributor's config).
Each received message is appended to --out as {"severity": S, "payload": "..."}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct

from logdist.wire.legacy import encode_ack, encode_weight


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", help="distributor HOST:PORT for legacy analyzers")
    where.add_argument("--listen", help="HOST:PORT to wait on for a distributor")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(encode_weight(args.weight))
        print(json.dumps({"event": "ready", "weight": args.weight}), flush=True)
        await serve(reader, writer, args.out, stop)
        return
    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: serve(r, w, args.out, stop), host, int(port))
    bound = server.sockets[0].getsockname()
    print(json.dumps({"event": "ready", "listen": f"{bound[0]}:{bound[1]}"}), flush=True)
    await stop.wait()
    server.close()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out_path: str, stop: asyncio.Event) -> None:
    """Read frames until EOF or ``stop``; append each message to ``out_path``; ack every 10 (cumulative)."""
    count = 0
    with open(out_path, "a") as out:
        while not stop.is_set():
            read = asyncio.ensure_future(reader.readexactly(5))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                break
            try:
                length, severity = struct.unpack(">IB", read.result())
                payload = await reader.readexactly(length - 5)
            except asyncio.IncompleteReadError:
                break
            out.write(json.dumps({"severity": severity, "payload": payload.decode("utf-8", "replace")}) + "\n")
            count += 1
            if count % 10 == 0:
                out.flush()  # processed: only now may the ack say so
                writer.write(encode_ack(count))
        out.flush()
        if count % 10:
            writer.write(encode_ack(count))
    writer.close()


if __name__ == "__main__":
    asyncio.run(main())
