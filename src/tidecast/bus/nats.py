"""NatsBus: the bus on NATS, durable where it matters.

- Pipeline subjects (``job.>``, ``segment.>``, ``broadcast.>``, ``dead.>``) go
  to one JetStream stream: a publish returns only once the server stored it.
  A subscription with a ``group`` is one durable pull consumer shared by every
  member (a work queue: each message to one member, redelivered after
  ``ack_wait`` if its member dies, ``nak(delay)`` for backoff, at most
  ``max_deliver`` times, at most ``max_ack_pending`` unacknowledged in all).
  Members pull: ``next()`` sends one pull request for one message (concurrent
  ``next()`` calls on one subscription take turns), so a member that pulled N
  messages and settled none holds exactly N; nothing is prefetched.
  A subscription without a group sees every new message (an ephemeral ordered
  consumer, read as it is consumed: the server's flow control holds it back).
- Everything else (``chat.>``, notifications) is core NATS: fan-out to whoever
  listens now, no storage. Each subscription keeps at most ``bound`` messages
  and drops the oldest past that; the client's own buffer has explicit limits
  and what it drops (a slow consumer) is counted.

Bytes that are not a message never reach a consumer (``bus.intake``): logged,
counted once per process, copied once to ``dead.<subject>`` (published with a
``Nats-Msg-Id`` derived from the message, so the server keeps one copy when
several processes see it), and terminated on a pull consumer.

A NATS restart does not end anything: subscriptions are (re)made in
supervised tasks that retry with backoff, ``next()`` waits out a reconnect
(its only deadline is the caller's ``timeout``), and ``ready()`` has a
deadline of its own.

``prefix`` puts every subject (and the stream) in its own namespace, so
several deployments — or test runs — can share one NATS server.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from tidecast.bus.base import (
    DEAD_ROOT,
    DURABLE_ROOTS,
    BusNotReady,
    Delivery,
    dead_subject,
    is_durable,
    subject_root,
)
from tidecast.bus.intake import Intake, Poison, dead_letter
from tidecast.messages import Message, encode
from tidecast.retry import Backoff
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.bus.nats")

__all__ = ["DURABLE_ROOTS", "NatsBus", "NatsSubscription"]

FETCH_SLICE = 1.0  # seconds one pull request lives at the server (an idle member renews it)
CORE_WINDOW = 10.0  # seconds a core message's key (a hash of its bytes) is remembered
DEAD_RETRY_FOR = 30.0  # seconds a dead letter's publish is retried
DROP_LOG_EVERY = 1000
RETRY = Backoff(initial=0.1, maximum=2.0)


def _durable_name(group: str, pattern: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{group}__{pattern}")[:200]


def _content_key(subject: str, data: bytes) -> str:
    return hashlib.sha256(subject.encode() + b"\0" + data).hexdigest()[:32]


async def _noop() -> None:
    return None


async def _noop_nak(delay: float) -> None:
    return None


class NatsSubscription:
    def __init__(self, bus: NatsBus, pattern: str, group: str | None) -> None:
        self.bus = bus
        self.pattern = pattern
        self.subject = bus.prefix + pattern
        self.group = group
        self.mode = "core" if not is_durable(pattern) else "fanout" if group is None else "pull"
        self.name = f"group {group} on {pattern}" if group else f"subscriber of {pattern}"
        self.durable = _durable_name(bus.prefix + group, self.subject) if group else ""
        self.closed = False
        self.active = asyncio.Event()  # the server side exists
        self.drops = 0
        self._core_sub: Any = None
        self._js_sub: Any = None
        self._items: deque[Msg] = deque()  # core messages not taken yet (bounded)
        self._wakeup = asyncio.Event()
        self._pull_lock = asyncio.Lock()  # one outstanding pull request per subscription
        self._scopes: set[asyncio.Timeout] = set()  # the next() calls waiting now
        self._start_task: asyncio.Task[Any] | None = None

    # -- the server side ---------------------------------------------------------------
    def begin(self) -> None:
        """Make the server side, in a supervised task (retried until it works or closes)."""
        self._start_task = self.bus._sup.run(f"bus-subscribe {self.pattern}", self._start())

    async def _start(self) -> None:
        delays = RETRY.delays()
        while not self.closed:
            try:
                await self._start_once()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                delay = next(delays)
                log.warning("subscribing to %s failed (%r); retrying in %.1f s", self.subject, exc, delay)
                await asyncio.sleep(delay)
                continue
            if self.closed:  # closed meanwhile: undo
                await self._unsubscribe()
                return
            self.active.set()
            return

    async def _start_once(self) -> None:
        b = self.bus
        limits: dict[str, Any] = {"pending_msgs_limit": b.client_pending,
                                  "pending_bytes_limit": b.pending_bytes}  # fmt: skip
        if self.mode == "core":
            self._core_sub = await b.nc.subscribe(
                self.subject, queue=self.group or "", cb=self._on_core, **limits
            )
            b._owners[self._core_sub] = self
        elif self.mode == "fanout":
            last = (await b.js.stream_info(b.stream)).state.last_seq
            self._js_sub = await b.js.subscribe(
                self.subject, stream=b.stream, ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW, **limits,
            )  # fmt: skip
            # nats-py resets an ordered consumer (after a server restart) at the last stream
            # sequence it delivered + 1, which is 1 while nothing came yet: the whole stream
            # would be replayed to a subscriber that asked for new messages only
            jsi = getattr(getattr(self._js_sub, "_sub", None), "_jsi", None)
            if jsi is not None and getattr(jsi, "_sseq", None) == 0:
                jsi._sseq = last
            b._owners[self._js_sub._sub] = self
        else:
            await self._ensure_consumer()
            self._js_sub = await b.js.pull_subscribe_bind(durable=self.durable, stream=b.stream, **limits)
            b._owners[self._js_sub._sub] = self

    async def _ensure_consumer(self) -> None:
        b = self.bus
        try:
            await b.js.consumer_info(b.stream, self.durable)
        except NotFoundError:
            cfg = ConsumerConfig(
                name=self.durable, durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=b.ack_wait, max_deliver=b.max_deliver, filter_subject=self.subject,
                deliver_policy=DeliverPolicy.ALL, max_ack_pending=b.max_ack_pending,
            )  # fmt: skip
            await b.js.add_consumer(b.stream, cfg)

    async def consumer_info(self) -> Any:
        """The JetStream consumer's state (a group subscription only): ``num_ack_pending``..."""
        return await self.bus.js.consumer_info(self.bus.stream, self.durable)

    async def _on_core(self, msg: Msg) -> None:
        if len(self._items) >= self.bus.bound:
            old = self._items.popleft()
            self.bus.intake.drop(self._local(old.subject), "overflow")
            self.drops += 1
            if self.drops % DROP_LOG_EVERY == 1:
                log.warning("%s: queue full (%d); dropped the oldest message (%d dropped so far)",
                            self.name, self.bus.bound, self.drops)  # fmt: skip
        self._items.append(msg)
        self._wakeup.set()

    # -- taking messages ---------------------------------------------------------------
    def pending(self) -> int:
        if self.mode == "core":
            return len(self._items)
        if self.mode == "fanout" and self._js_sub is not None:
            return int(self._js_sub.pending_msgs)
        return 0  # a group member holds nothing it did not pull

    async def next(self, timeout: float | None = None) -> Delivery | None:
        if self.closed:
            return None
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        scope = asyncio.timeout_at(end)
        self._scopes.add(scope)
        try:
            async with scope:
                return await self._next(end)
        except TimeoutError:
            if scope.expired():  # the caller's deadline, or aclose()
                return None
            raise
        finally:
            self._scopes.discard(scope)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            d = await self.next()
            if d is None:
                return
            yield d

    async def _next(self, end: float | None) -> Delivery | None:
        if not self.active.is_set():
            if self._start_task is None or self._start_task.done():
                self.begin()  # the last attempt crashed: try again
            await self.active.wait()
        if self.mode == "core":
            return await self._next_core()
        if self.mode == "fanout":
            return await self._next_fanout()
        async with self._pull_lock:
            return await self._next_pull(end)

    async def _next_core(self) -> Delivery | None:
        while not self.closed:
            if not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            msg = self._items.popleft()
            subject, data = self._local(msg.subject), msg.data
            got = self.bus.intake.screen(subject, data, key=lambda: _content_key(subject, data),
                                         window=CORE_WINDOW)  # fmt: skip
            if isinstance(got, Poison):
                if got.first:
                    await self.bus._dead_letter(subject, data, got.reason, self.name, got.key)
                continue
            return Delivery(subject, got, 1, _noop, _noop_nak, None, _noop, data)
        return None

    async def _next_fanout(self) -> Delivery | None:
        delays: Iterator[float] | None = None
        while not self.closed:
            try:
                msg = await self._js_sub.next_msg(timeout=None)
            except nats.errors.Error as exc:
                if self.closed:
                    return None
                delays = self._trouble(delays, exc)
                await asyncio.sleep(next(delays))
                continue
            d = await self._screen_js(msg, pull=False)
            if d is not None:
                return d
        return None

    async def _next_pull(self, end: float | None) -> Delivery | None:
        loop = asyncio.get_running_loop()
        delays: Iterator[float] | None = None
        while not self.closed:
            if not self.bus.nc.is_connected:  # no pull requests piling up while NATS is away
                delays = self._trouble(delays, None)
                await asyncio.sleep(next(delays))
                continue
            wait = FETCH_SLICE if end is None else max(0.05, min(FETCH_SLICE, end - loop.time()))
            try:
                msgs = await self._js_sub.fetch(batch=1, timeout=wait)
            except nats.errors.TimeoutError:
                continue  # nothing to take (yet)
            except nats.errors.Error as exc:
                if self.closed:
                    return None
                delays = self._trouble(delays, exc)
                if isinstance(exc, nats.js.errors.APIError):
                    await self._reensure()
                await asyncio.sleep(next(delays))
                continue
            if delays is not None:
                log.info("%s: pulling again", self.name)
                delays = None
            d = await self._screen_js(msgs[0], pull=True)
            if d is not None:
                return d
        return None

    def _trouble(self, delays: Iterator[float] | None, exc: BaseException | None) -> Iterator[float]:
        """The backoff of a retry loop; logs once per outage."""
        if delays is None:
            log.warning("%s: NATS unavailable (%r); waiting for it", self.name, exc or "disconnected")
            delays = RETRY.delays()
        return delays

    async def _reensure(self) -> None:
        try:
            await self._ensure_consumer()
        except nats.errors.Error as exc:
            log.info("%s: consumer check failed: %r", self.name, exc)

    async def _screen_js(self, msg: Msg, *, pull: bool) -> Delivery | None:
        b = self.bus
        subject, data = self._local(msg.subject), msg.data
        meta = msg.metadata
        key = f"{b.stream}:{meta.sequence.stream}"
        got = b.intake.screen(subject, data, key=lambda: key)
        if isinstance(got, Poison):
            if got.first:
                await b._dead_letter(subject, data, got.reason, self.name, got.key)
            if pull:
                try:
                    await msg.term()  # never redelivered, to any member
                except nats.errors.Error as exc:
                    log.warning("%s: could not terminate a poison message (%r); it may come back "
                                "(and be dropped again)", self.name, exc)  # fmt: skip
            return None
        if not pull:
            return Delivery(subject, got, 1, _noop, _noop_nak, None, _noop, data)

        async def nak(delay: float) -> None:
            await msg.nak(delay=delay)

        return Delivery(subject, got, meta.num_delivered, msg.ack, nak, msg.in_progress, msg.term, data)

    def _local(self, subject: str) -> str:
        return subject.removeprefix(self.bus.prefix)

    # -- closing -----------------------------------------------------------------------
    async def _unsubscribe(self) -> None:
        for sub in (self._core_sub, self._js_sub):
            if sub is None:
                continue
            self.bus._owners.pop(getattr(sub, "_sub", sub), None)
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # closed connection, already gone
                log.debug("unsubscribing %s: %r", self.subject, exc)
        self._core_sub = self._js_sub = None

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = asyncio.get_running_loop().time()
        for scope in list(self._scopes):  # a next() waiting now returns None
            try:
                scope.reschedule(now)
            except RuntimeError:  # it is finishing on its own
                log.debug("next() on %s already finishing", self.subject)
        self._wakeup.set()
        task = self._start_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=2.0)
        await self._unsubscribe()
        self._items.clear()
        if self in self.bus._subs:  # a broadcast's subscription must not outlive it here
            self.bus._subs.remove(self)


class NatsBus:
    def __init__(
        self, url: str = "nats://127.0.0.1:4222", *, stream: str = "TIDECAST", prefix: str = "",
        ack_wait: float = 120.0, max_deliver: int = 10, max_age: float = 24 * 3600,
        publish_retry_for: float = 300.0, bound: int = 10_000, client_pending: int = 65_536,
        pending_bytes: int = 64 << 20, max_ack_pending: int = 512, intake: Intake | None = None,
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
        self.bound = bound  # core messages one subscription keeps waiting (oldest dropped)
        # the client's own buffer of one subscription, what it drops is a slow consumer
        # (a core subscription empties it at once into its bounded queue)
        self.client_pending = client_pending
        self.pending_bytes = pending_bytes
        self.max_ack_pending = max_ack_pending  # unacknowledged messages of one group, in all
        self.publish_retries = 0
        self.intake = intake or Intake()
        self._away = False
        self._closing = False
        self.nc: Client = Client()
        self.js: Any = None
        self._subs: list[NatsSubscription] = []
        self._owners: dict[Any, NatsSubscription] = {}  # client subscription -> ours
        self._sup = Supervisor("bus")
        self._slow_logged: set[str] = set()

    async def start(self) -> None:
        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self._slow_consumer(exc)
            elif not self._away:  # one line per outage, not nats-py's traceback per attempt
                log.warning("NATS %s: %r", self.url, exc)

        async def on_disconnect() -> None:
            if self._closing:
                return
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

    def _slow_consumer(self, exc: nats.errors.SlowConsumerError) -> None:
        ours = self._owners.get(exc.sub)
        subject = ours.pattern if ours is not None else exc.subject.removeprefix(self.prefix)
        self.intake.drop(subject, "slow_consumer")
        if subject not in self._slow_logged:
            self._slow_logged.add(subject)
            log.warning("NATS %s: slow consumer on %s, messages dropped (counted in "
                        "tidecast_bus_dropped_total)", self.url, subject)  # fmt: skip

    async def publish(self, subject: str, message: Message) -> None:
        await self.publish_raw(subject, encode(message))

    async def publish_raw(self, subject: str, data: bytes) -> None:
        full = self.prefix + subject
        if not is_durable(subject):
            await self.nc.publish(full, data)
            return
        # the id lets the server drop a retry of a message it did store but could not confirm
        await self._publish_stored(full, data, _content_key(full, data), self.publish_retry_for)

    async def _publish_stored(self, full: str, data: bytes, msg_id: str, retry_for: float) -> None:
        """Publish to the stream, stored before this returns. While the server is away
        (a restart) keep trying for ``retry_for`` seconds: the caller's data is safe in
        the store, only this message is late."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        delays = Backoff(initial=0.1, maximum=2.0, jitter=0.2).delays()
        while True:
            try:
                await self.js.publish(full, data, stream=self.stream, timeout=2.0,
                                      headers={"Nats-Msg-Id": msg_id})  # fmt: skip
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                    nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError,
                    ServiceUnavailableError) as exc:  # fmt: skip
                delay = next(delays)
                if loop.time() + delay > deadline:
                    raise
                self.publish_retries += 1
                log.warning("publish on %s not confirmed (%r); retrying in %.1f s", full, exc, delay)
                await asyncio.sleep(delay)

    async def _dead_letter(self, subject: str, data: bytes, reason: str, consumer: str, key: str) -> None:
        """Copy a poison message to ``dead.<subject>``, once per ``key`` on the server.

        The publish runs as a supervised task that a caller's timeout or cancellation
        does not cut short: the message was counted as seen, so this is its one copy."""
        if subject_root(subject) == DEAD_ROOT:
            return  # a dead letter that is itself not a message: counted and dropped
        body = encode(dead_letter(subject, data, reason, consumer))
        await asyncio.shield(self._sup.run(f"dead-letter {subject}", self._publish_dead(subject, body, key)))

    async def _publish_dead(self, subject: str, body: bytes, key: str) -> None:
        try:
            await self._publish_stored(self.prefix + dead_subject(subject), body, f"dead-{key}",
                                       DEAD_RETRY_FOR)  # fmt: skip
        except nats.errors.Error as exc:
            self.intake.dead_failures.inc(subject=subject_root(subject))
            log.error("could not dead-letter a message on %s: %r", subject, exc)

    def subscribe(self, pattern: str, group: str | None = None) -> NatsSubscription:
        sub = NatsSubscription(self, pattern, group)
        self._subs.append(sub)
        sub.begin()  # the Bus interface subscribes synchronously; the server side follows
        return sub

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until every subscription made so far is active on the server;
        ``BusNotReady`` if some are not after ``timeout`` seconds."""
        waiting = [s for s in self._subs if not s.active.is_set()]
        for s in waiting:
            if s._start_task is None or s._start_task.done():
                s.begin()
        try:
            async with asyncio.timeout(timeout):
                for s in waiting:
                    await s.active.wait()
        except TimeoutError:
            late = sorted({s.subject for s in waiting if not s.active.is_set()})
            raise BusNotReady(f"subscriptions to {', '.join(late)} are not active on NATS "
                              f"{self.url} after {timeout:g} s") from None  # fmt: skip

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        """Read the stored messages from ``since`` on with throw-away ordered consumers
        (one per pattern: a filter must lie inside one of the stream's subjects),
        until none is pending, merged back into publish order by stream sequence.
        What arrives later reaches the live subscriptions. Stored bytes that are not
        a message are skipped (counted; the live subscriptions dead-lettered them)."""
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
                    seq = msg.metadata.sequence.stream
                    key = functools.partial("{}:{}".format, self.stream, seq)
                    got = self.intake.screen(msg.subject.removeprefix(self.prefix), msg.data, key=key)
                    if not isinstance(got, Poison):
                        found.append((seq, got))
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                try:
                    await sub.unsubscribe()
                except nats.errors.Error as exc:
                    log.debug("replay: unsubscribing %s: %r", pattern, exc)
        found.sort(key=lambda item: item[0])
        return [m for _, m in found]

    async def delete_stream(self) -> None:
        try:
            await self.js.delete_stream(self.stream)
        except NotFoundError:
            log.debug("stream %s was already gone", self.stream)

    async def aclose(self) -> None:
        self._closing = True
        for sub in list(self._subs):
            await sub.aclose()
        await self._sup.aclose(timeout=5.0)
        if self.nc.is_connected:
            # every delivery was acked or nak'ed by now: flush what is written and close
            # (drain() would wait out its timeout on a pull consumer's pending request)
            try:
                await self.nc.flush(timeout=2)
            except (nats.errors.Error, TimeoutError) as exc:
                log.info("NATS %s: flush on close: %r", self.url, exc)
        if self.nc.is_connected or self.nc.is_reconnecting:
            try:
                async with asyncio.timeout(5.0):
                    await self.nc.close()
            except TimeoutError:
                log.warning("NATS %s: close did not finish within 5 s", self.url)
