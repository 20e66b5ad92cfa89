"""The smallest native-protocol analyzer: answer HELLO with WELCOME, process each BATCH, then ACK it.

    python examples/native_analyzer.py --listen 127.0.0.1:9010

Point the distributor at it with `--analyzer mine=127.0.0.1:9010@1`. Uses logdist's sans-IO codec; the
reference analyzer (`logdist analyzer`) is the full version (checksums, dedup, latency, stats).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from logdist.wire.errors import ProtocolError
from logdist.wire.native import (
    Batch,
    FrameDecoder,
    Heartbeat,
    Hello,
    Welcome,
    encode_ack,
    encode_error,
    encode_heartbeat,
    encode_welcome,
)


class Analyzer(asyncio.Protocol):
    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            events = self.decoder.feed(data)
        except ProtocolError as exc:
            self.transport.write(encode_error(exc.code, exc.reason))
            self.transport.close()
            return
        for event in events:
            if isinstance(event, Hello):
                self.transport.write(encode_welcome(Welcome(server_id="example")))
            elif isinstance(event, Batch):
                for message in event.block.messages():  # your processing goes here
                    print(
                        json.dumps(
                            {"severity": message.severity, "payload": message.payload.decode("utf-8", "replace")}
                        )
                    )
                self.transport.write(encode_ack(event.seq))  # ack only what was processed
            elif isinstance(event, Heartbeat) and not event.pong:
                self.transport.write(encode_heartbeat(event.token, pong=True))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = await asyncio.get_running_loop().create_server(Analyzer, host, int(port))
    bound = server.sockets[0].getsockname()
    print(json.dumps({"event": "ready", "listen": f"{bound[0]}:{bound[1]}"}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
