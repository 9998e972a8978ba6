"""NatsBus: the bus on NATS, durable where it matters.

- Pipeline subjects (``job.>``, ``segment.>``, ``broadcast.>``, ``dead.>``) go
  to one JetStream stream: a publish returns only once the server stored it.
  A subscription with a ``group`` is one durable pull consumer shared by every
  member (a work queue: each message to one member, redelivered after
  ``ack_wait`` if its member dies, ``nak(delay)`` for backoff, at most
  ``max_deliver`` times). A subscription without a group sees every new message
  (an ephemeral ordered consumer).
- Everything else (``chat.>``, notifications) is core NATS: fan-out to whoever
  listens now, no storage.

``prefix`` puts every subject (and the stream) in its own namespace, so
several deployments — or test runs — can share one NATS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from tidecast.bus.base import Delivery
from tidecast.messages import Message, decode, encode

log = logging.getLogger("tidecast.bus.nats")

DURABLE_ROOTS = ("job", "segment", "broadcast", "dead")


def _durable_name(group: str, pattern: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{group}__{pattern}")[:200]


class NatsSubscription:
    def __init__(self, bus: NatsBus, subject: str, group: str | None) -> None:
        self.bus = bus
        self.subject = subject
        self.group = group
        self.queue: asyncio.Queue[tuple[Msg, int] | None] = asyncio.Queue(maxsize=256)
        self._task: asyncio.Task[None] | None = None
        self._core_sub: Any = None
        self._js_sub: Any = None
        self.closed = False

    async def start(self) -> None:
        b = self.bus
        root = self.subject.removeprefix(b.prefix).split(".", 1)[0]
        if root not in DURABLE_ROOTS:
            self._core_sub = await b.nc.subscribe(
                self.subject, queue=self.group or "", cb=self._on_core
            )
        elif self.group is None:
            self._js_sub = await b.js.subscribe(
                self.subject, stream=b.stream, ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW, cb=self._on_core,
            )  # fmt: skip
        else:
            durable = _durable_name(b.prefix + self.group, self.subject)
            cfg = ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=b.ack_wait,
                max_deliver=b.max_deliver, filter_subject=self.subject,
                deliver_policy=DeliverPolicy.ALL, max_ack_pending=1000,
            )  # fmt: skip
            self._js_sub = await b.js.pull_subscribe(
                self.subject, durable=durable, stream=b.stream, config=cfg
            )
            self._task = asyncio.create_task(self._fetch_loop(), name=f"nats-fetch {self.subject}")

    async def _on_core(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered if msg.reply and msg.reply.startswith("$JS.ACK") else 1
        await self.queue.put((msg, attempt))

    async def _fetch_loop(self) -> None:
        while not self.closed:
            try:
                msgs = await self._js_sub.fetch(batch=1, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
            ) as exc:
                log.warning("fetch on %s: %r; retrying", self.subject, exc)
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                await self.queue.put((m, m.metadata.num_delivered))

    def pending(self) -> int:
        return self.queue.qsize()

    async def next(self, timeout: float | None = None) -> Delivery | None:
        if self.closed:
            return None
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        if item is None:
            return None
        msg, attempt = item
        return self._delivery(msg, attempt)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            d = await self.next()
            if d is None:
                return
            yield d

    def _delivery(self, msg: Msg, attempt: int) -> Delivery:
        durable = self._task is not None

        async def ack() -> None:
            if durable:
                await msg.ack()

        async def nak(delay: float) -> None:
            if durable:
                await msg.nak(delay=delay)

        async def progress() -> None:
            if durable:
                await msg.in_progress()

        async def term() -> None:
            if durable:
                await msg.term()

        subject = msg.subject.removeprefix(self.bus.prefix)
        return Delivery(subject, decode(msg.data), attempt, ack, nak, progress, term, msg.data)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in (self._core_sub, self._js_sub):
            if sub is not None and self._task is None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)
        if self in self.bus._subs:  # a broadcast's subscription must not outlive it here
            self.bus._subs.remove(self)


class NatsBus:
    def __init__(
        self, url: str = "nats://127.0.0.1:4222", *, stream: str = "TIDECAST", prefix: str = "",
        ack_wait: float = 120.0, max_deliver: int = 10, max_age: float = 24 * 3600,
        publish_retry_for: float = 300.0,
    ) -> None:  # fmt: skip
        self.url = url
        self.stream = (
            f"{prefix.rstrip('.').replace('.', '_').upper()}_{stream}" if prefix else stream
        )
        self.prefix = f"{prefix.rstrip('.')}." if prefix else ""
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.max_age = max_age
        self.publish_retry_for = publish_retry_for
        self.publish_retries = 0
        self._away = False
        self.nc: Client = Client()
        self.js: Any = None
        self._subs: list[NatsSubscription] = []

    async def start(self) -> None:
        async def on_error(exc: Exception) -> None:
            if not self._away:  # one line per outage, not nats-py's traceback per attempt
                log.warning("NATS %s: %r", self.url, exc)

        async def on_disconnect() -> None:
            self._away = True
            log.warning("NATS %s: disconnected; reconnecting", self.url)

        async def on_reconnect() -> None:
            self._away = False
            log.info("NATS %s: reconnected", self.url)

        self.nc = await nats.connect(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, name="tidecast",
            error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
        )  # fmt: skip
        self.js = self.nc.jetstream()
        cfg = StreamConfig(
            name=self.stream, subjects=[f"{self.prefix}{r}.>" for r in DURABLE_ROOTS],
            retention=RetentionPolicy.LIMITS, max_age=self.max_age,
        )  # fmt: skip
        try:
            await self.js.stream_info(self.stream)
            await self.js.update_stream(cfg)
        except NotFoundError:
            await self.js.add_stream(cfg)
        log.info("bus on NATS %s (JetStream stream %s)", self.url, self.stream)

    async def publish(self, subject: str, message: Message) -> None:
        await self.publish_raw(subject, encode(message))

    async def publish_raw(self, subject: str, data: bytes) -> None:
        full = self.prefix + subject
        if subject.split(".", 1)[0] not in DURABLE_ROOTS:
            await self.nc.publish(full, data)
            return
        # stored before this returns. While the server is away (a restart) keep trying:
        # the caller's data is safe in the store, only this message is late. The id lets
        # the server drop a retry of a message it did store but could not confirm.
        msg_id = hashlib.sha256(full.encode() + b"\0" + data).hexdigest()[:32]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_retry_for
        delay = 0.1
        while True:
            try:
                await self.js.publish(full, data, stream=self.stream, timeout=2.0,
                                      headers={"Nats-Msg-Id": msg_id})  # fmt: skip
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                    nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError,
                    ServiceUnavailableError) as exc:  # fmt: skip
                if loop.time() + delay > deadline:
                    raise
                self.publish_retries += 1
                log.warning("publish on %s not confirmed (%r); retrying in %.1f s", subject, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def subscribe(self, pattern: str, group: str | None = None) -> NatsSubscription:
        sub = NatsSubscription(self, self.prefix + pattern, group)
        self._subs.append(sub)
        # the Bus interface subscribes synchronously; the server side follows at once
        sub._task_start = asyncio.ensure_future(sub.start())  # type: ignore[attr-defined]
        return sub

    async def ready(self) -> None:
        """Wait until every subscription made so far is active on the server."""
        for sub in list(self._subs):
            await sub._task_start  # type: ignore[attr-defined]

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        """Read the stored messages from ``since`` on with throw-away ordered consumers
        (one per pattern: a filter must lie inside one of the stream's subjects),
        until none is pending, merged back into publish order by stream sequence.
        What arrives later reaches the live subscriptions."""
        start = datetime.fromtimestamp(max(since, 0.0), UTC)
        found: list[tuple[int, Message]] = []
        for pattern in patterns:
            sub = await self.js.subscribe(
                self.prefix + pattern, stream=self.stream, ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
            )  # fmt: skip
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=0.5)
                    except nats.errors.TimeoutError:
                        break  # nothing (more) stored since then
                    found.append((msg.metadata.sequence.stream, decode(msg.data)))
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        found.sort(key=lambda item: item[0])
        return [m for _, m in found]

    async def delete_stream(self) -> None:
        with contextlib.suppress(NotFoundError):
            await self.js.delete_stream(self.stream)

    async def aclose(self) -> None:
        for sub in list(self._subs):
            await sub.aclose()
        if self.nc.is_connected:
            # every delivery was acked or nak'ed by now: flush what is written and close
            # (drain() would wait out its timeout on a pull consumer's pending request)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.flush(timeout=2)
            await self.nc.close()
