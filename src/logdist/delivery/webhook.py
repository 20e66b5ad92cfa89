"""Webhook analyzers: each batch is POSTed as NDJSON; 2xx acks it, 429/5xx retries it, other 4xx rejects it."""

from __future__ import annotations

import asyncio
import gzip
import logging

import aiohttp
import zstandard

from logdist.config import DeliveryConfig
from logdist.delivery.backoff import Backoff
from logdist.delivery.link import LinkCore, LinkOwner, LinkState
from logdist.delivery.wires import LinesWire
from logdist.wire.batch import MessageBlock
from logdist.wire.native import AckStatus

log = logging.getLogger("logdist.webhook")

_RETRYABLE = frozenset({408, 425, 429})


class WebhookLink(LinkCore):
    """POSTs batches (NDJSON, one message per line, as the ``lines`` kind writes them) to ``address`` (a URL).

    Up to ``window`` requests run at once. A 2xx answer acknowledges the batch; 429, 408 and 5xx put it back
    at the front of the queue and pause sending for a backoff; any other 4xx is a counted rejection with the
    response body logged. A connection error or timeout fails the link (its batches are rerouted) and a
    probe request is retried with backoff until the endpoint answers again.
    """

    kind = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        weight: float,
        config: DeliveryConfig,
        owner: LinkOwner,
        content_encoding: str | None = None,
    ) -> None:
        super().__init__(name, url, weight, config, owner)
        self.url = url
        self.content_encoding = content_encoding
        self._encoder = LinesWire()
        self._session: aiohttp.ClientSession | None = None
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._paused_until = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovered = asyncio.Event()

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._probe_loop(), name=f"webhook-{self.name}")

    async def close(self) -> list[MessageBlock]:
        self.state = LinkState.CLOSED
        for task in [self._runner, *self._tasks]:
            if task is not None:
                task.cancel()
        if self._session is not None:
            await self._session.close()
        return self._take_orphans()

    async def _probe_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(self.config.ack_timeout_s * 4, 2.0))
        self._session = aiohttp.ClientSession(timeout=timeout)
        while self.state != LinkState.CLOSED:
            if self.state != LinkState.UP:
                self.state = LinkState.CONNECTING
                try:
                    async with self._session.head(self.url) as response:
                        await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._mark_down(f"webhook unreachable: {exc!r}")
                    await asyncio.sleep(self._backoff.next())
                    continue
                self._backoff.reset()
                self._became_up()
            self._recovered.clear()
            await self._recovered.wait()

    def _can_send(self) -> bool:
        loop_time = asyncio.get_running_loop().time()
        return self.state == LinkState.UP and self._session is not None and loop_time >= self._paused_until

    def _send(self, seq: int, parts: list[MessageBlock]) -> None:
        body = b"".join(self._encoder.encode(seq, parts))
        task = asyncio.get_running_loop().create_task(self._post(seq, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, seq: int, body: bytes) -> None:
        headers = {"Content-Type": "application/x-ndjson"}
        if self.content_encoding == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        elif self.content_encoding == "zstd":
            body = zstandard.ZstdCompressor(level=3).compress(body)
            headers["Content-Encoding"] = "zstd"
        assert self._session is not None
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                text = await response.text(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            if self.state == LinkState.UP:
                self._mark_down(f"webhook request failed: {exc!r}")
                self._recovered.set()
            return
        if 200 <= status < 300:
            self._backoff.reset()
            self._outcome(seq, AckStatus.OK)
        elif status in _RETRYABLE or status >= 500:
            delay = self._backoff.next()
            self._paused_until = asyncio.get_running_loop().time() + delay
            asyncio.get_running_loop().call_later(delay, self._flush)
            log.warning("webhook %s answered %d; retrying batch in %.2fs", self.name, status, delay)
            self._outcome(seq, AckStatus.RETRY)
        else:
            log.error("webhook %s rejected a batch with %d: %s", self.name, status, text[:500])
            self._outcome(seq, AckStatus.REJECTED)
        self._flush()
