"""Hostile clients over real sockets, one async function per attack. Each runs its attack
from chosen loopback addresses (client sockets bound to 127.0.0.x) and returns what it
saw; the result's ``check()`` asserts what the server must have done to it, and
``figures()`` is the line a test prints. tests/e2e/test_hostile.py runs them all at once.

The attacks that hold connections (slowloris, trickled RTMP handshakes, chat sockets that
never join) come in waves: a wave's connections are all opened and held until the server
cuts them, then the next wave opens, from addresses of its own (so no per-address count
is still draining from the wave before). ``opened`` is called once the first wave is open.

``Attacker`` runs an attack in a process of its own, so that running them all at once
measures the server, not one Python process's event loop.

Every loop is bounded and every wait has a deadline."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import math
import multiprocessing
import re
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.e2e.rtmp_probe import Verdict, probe_publish

Waves = Sequence[Sequence[str]]  # the source addresses of each wave


def span(values: Sequence[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f} s" if values else "-"


class LoopLag:
    """While in the block: how late this event loop woke up at worst. A client's own view of
    when the server did something can be that late (a busy client reads late)."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def _watch(self) -> None:
        for _ in range(60_000):  # 10 minutes at most
            at = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - at - 0.01)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


@dataclass
class Held:
    """Connections an attack held until the server cut them at its deadline. Each one is
    timed twice: from just before its connect (``at_least``: never shorter than the
    server's own count from its accept, however slow the connect or this client), and
    from the connect done (``lifetimes``: inf when never cut), which can be late by as
    much as this client's event loop was (``lag``)."""

    deadline: float
    per_wave: int
    waves: int
    at_least: list[float] = field(default_factory=list)
    lifetimes: list[float] = field(default_factory=list)
    lag: float = 0.0

    def check_deadline(self, slack: float) -> None:
        """Every connection was cut, none before the deadline, all within ``slack`` of it
        (plus this client's own lateness)."""
        assert len(self.lifetimes) == len(self.at_least) == self.per_wave * self.waves
        never = sum(1 for t in self.lifetimes if t == math.inf)
        assert never == 0, f"{never} of {len(self.lifetimes)} connections were never cut"
        assert min(self.at_least) >= self.deadline - 0.1, f"cut before the deadline: {span(self.at_least)}"
        assert max(self.lifetimes) < self.deadline + slack + self.lag, (
            f"cut late: {span(self.lifetimes)} (this client up to {self.lag:.2f} s late)")  # fmt: skip

    def held_for(self) -> str:
        return (f"{len(self.lifetimes)} ({self.waves} wave(s) of {self.per_wave}), each cut "
                f"{span(self.lifetimes)} after connecting (deadline {self.deadline:g} s; "
                f"the attacker's loop at most {self.lag * 1000:.0f} ms late)")  # fmt: skip


Conn = tuple[float, float, asyncio.StreamReader, asyncio.StreamWriter]  # before, after the connect


async def _connect(port: int, src: str) -> Conn:
    before = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), 5)
    return before, time.monotonic(), r, w


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """When the server closed the connection (inf: not within ``limit`` seconds), and the
    first 4 kB it said."""
    got = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(4096):
                got = (got + chunk)[:4096]
    except ConnectionError:
        pass
    except TimeoutError:
        return math.inf, got
    return time.monotonic(), got


# ------------------------------------------------------------------ slowloris (HTTP)
@dataclass
class Slowloris(Held):
    answers: list[bytes] = field(default_factory=list)
    held: list[float] = field(default_factory=list)  # the server's open connections, each wave open

    def check(self) -> None:
        self.check_deadline(slack=2.0)
        assert min(self.held) >= self.per_wave, f"the server held {self.held} connections"
        assert all(a.startswith(b"HTTP/1.1 408") for a in self.answers), collections.Counter(a[:20] for a in self.answers)

    def figures(self) -> str:
        return (f"slowloris: {self.held_for()}; each answered 408; {min(self.held):.0f}+ connections open "
                f"on the server at each wave's peak")  # fmt: skip


async def slowloris(port: int, waves: Waves, per_source: int, head_timeout: float,
                    connections: Callable[[], float], opened: Callable[[], None] | None = None) -> Slowloris:  # fmt: skip
    """Request heads that never end: a header line growing by a byte a second.
    ``connections`` reads the server's count of open HTTP connections."""
    out = Slowloris(head_timeout, per_source * len(waves[0]), len(waves))
    async with LoopLag() as lag:
        for sources in waves:
            conns = [c for src in sources for c in await asyncio.gather(*(_connect(port, src) for _ in range(per_source)))]
            for *_, w in conns:
                w.write(b"GET /hls/live/source.m3u8 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            ends = [asyncio.create_task(_until_closed(r, head_timeout + 10)) for _, _, r, _ in conns]

            async def trickle(conns: list[Conn] = conns) -> None:
                for _ in range(int(head_timeout + 10)):  # a byte a second on every connection still open
                    await asyncio.sleep(1.0)
                    for *_, w in conns:
                        if not w.is_closing():
                            w.write(b"a")

            sender = asyncio.create_task(trickle())
            out.held.append(await asyncio.to_thread(connections))
            if opened is not None:
                opened()
            done = await asyncio.gather(*ends)
            sender.cancel()
            for *_, w in conns:
                w.close()
            out.at_least += [end - before for (end, _), (before, *_) in zip(done, conns, strict=True)]
            out.lifetimes += [end - after for (end, _), (_, after, *_) in zip(done, conns, strict=True)]
            out.answers += [a for _, a in done]
    out.lag = lag.worst
    return out


# ------------------------------------------------------------------ RTMP handshakes, trickled
@dataclass
class Trickle(Held):
    def check(self) -> None:
        self.check_deadline(slack=2.5)

    def figures(self) -> str:
        return f"RTMP trickle: clients sending their handshake a byte at a time: {self.held_for()}"


async def trickle_rtmp(port: int, waves: Waves, per_source: int, deadline: float,
                       opened: Callable[[], None] | None = None) -> Trickle:  # fmt: skip
    """RTMP clients sending C0+C1 one byte every 0.25 s: they never reach publish."""
    out = Trickle(deadline, per_source * len(waves[0]), len(waves))
    handshake = b"\x03" + bytes(1536)

    async def feed(w: asyncio.StreamWriter) -> None:
        for i in range(int((deadline + 5) / 0.25)):
            if w.is_closing():
                return
            w.write(handshake[i : i + 1])
            await asyncio.sleep(0.25)

    async with LoopLag() as lag:
        for sources in waves:
            conns = [c for src in sources for c in await asyncio.gather(*(_connect(port, src) for _ in range(per_source)))]
            feeders = [asyncio.create_task(feed(w)) for *_, w in conns]
            ends = [asyncio.create_task(_until_closed(r, deadline + 5)) for _, _, r, _ in conns]
            if opened is not None:
                opened()
            done = await asyncio.gather(*ends)
            for f in feeders:
                f.cancel()
            for *_, w in conns:
                w.close()
            out.at_least += [end - before for (end, _), (before, *_) in zip(done, conns, strict=True)]
            out.lifetimes += [end - after for (end, _), (_, after, *_) in zip(done, conns, strict=True)]
    out.lag = lag.worst
    return out


# ------------------------------------------------------------------ chat sockets that never join
@dataclass
class IdleChat(Held):
    codes: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # the answer to one socket past each address's cap
    addresses: int = 0

    def check(self) -> None:
        self.check_deadline(slack=3.0)
        assert set(self.codes) == {4008}, collections.Counter(self.codes)
        assert self.refused == ["too_many_connections"] * self.addresses, self.refused

    def figures(self) -> str:
        return (f"chat: sockets that never joined: {self.held_for()}, each closed 4008; "
                f"{len(self.refused)} past the per-address cap refused")  # fmt: skip


async def idle_chat(url: str, waves: Waves, per_source: int, join_timeout: float,
                    opened: Callable[[], None] | None = None) -> IdleChat:  # fmt: skip
    """``per_source`` sockets from each address (its whole cap) that never join, and one
    more from each that the cap must refuse."""
    out = IdleChat(join_timeout, per_source * len(waves[0]), len(waves))

    async def closed(ws: websockets.ClientConnection) -> tuple[float, int]:
        try:
            async with asyncio.timeout(join_timeout + 10):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed as exc:
            return time.monotonic(), exc.rcvd.code if exc.rcvd else 0
        except TimeoutError:
            pass
        return math.inf, 0

    async def connect(src: str) -> tuple[float, float, asyncio.Task[tuple[float, int]]]:
        before = time.monotonic()
        ws = await websockets.connect(url, local_addr=(src, 0), open_timeout=10)
        return before, time.monotonic(), asyncio.create_task(closed(ws))

    async def fill(src: str) -> list[tuple[float, float, asyncio.Task[tuple[float, int]]]]:
        """An address's whole cap, then one more: refused."""
        socks = await asyncio.gather(*(connect(src) for _ in range(per_source)))
        extra = await websockets.connect(url, local_addr=(src, 0), open_timeout=10)
        try:
            out.refused.append(json.loads(await asyncio.wait_for(extra.recv(), 5))["code"])
        finally:
            await extra.close()
        out.addresses += 1
        return socks

    async with LoopLag() as lag:
        for sources in waves:
            socks = [t for batch in await asyncio.gather(*(fill(src) for src in sources)) for t in batch]
            if opened is not None:
                opened()
            done = await asyncio.gather(*(task for *_, task in socks))
            out.at_least += [end - before for (end, _), (before, *_) in zip(done, socks, strict=True)]
            out.lifetimes += [end - after for (end, _), (_, after, _) in zip(done, socks, strict=True)]
            out.codes += [c for _, c in done]
    out.lag = lag.worst
    return out


# ------------------------------------------------------------------ wrong stream keys
@dataclass
class WrongKeys:
    source: str
    max_failures: int
    ban_seconds: float
    verdicts: list[Verdict]
    took: float
    right_key_from_banned: Verdict
    other_address: str
    right_key_from_other: Verdict

    def check(self, log: str) -> None:
        v, n = self.verdicts, self.max_failures
        assert all(not x.accepted for x in v)
        assert [x.description for x in v[:n]] == ["unknown stream key"] * n, v[:n]
        assert all(x.code == "NetConnection.Connect.Rejected" and "banned for" in x.description for x in v[n:]), (
            collections.Counter((x.code, x.description) for x in v[n:]))  # fmt: skip
        assert f"banned {self.source} for {self.ban_seconds:.0f} s after too many failed publish attempts" in log
        # the right key from the banned address is refused too; another address gets in
        b = self.right_key_from_banned
        assert not b.accepted and "banned for" in b.description, b
        assert self.right_key_from_other.accepted, self.right_key_from_other

    def figures(self) -> str:
        return (f"wrong keys: {len(self.verdicts)} from {self.source} in {self.took:.1f} s "
                f"({self.took / len(self.verdicts) * 1000:.2f} ms each): "
                f"{sum(v.description == 'unknown stream key' for v in self.verdicts)} refused as unknown, "
                f"{sum('banned for' in v.description for v in self.verdicts)} as banned; "
                f"the right key from {self.source}: {self.right_key_from_banned.code}; "
                f"from {self.other_address}: {self.right_key_from_other.code}")  # fmt: skip


async def wrong_keys(port: int, source: str, n: int, key: str, other: str, max_failures: int,
                     ban_seconds: float) -> WrongKeys:  # fmt: skip
    """``n`` publish attempts with wrong keys from ``source`` as fast as they are answered,
    then the right ``key`` from ``source`` and from ``other``."""

    def run() -> WrongKeys:
        t0 = time.monotonic()
        verdicts = [probe_publish(port, f"sk_guess{i}", source=source) for i in range(n)]
        took = time.monotonic() - t0
        banned = probe_publish(port, key, source=source)
        return WrongKeys(source, max_failures, ban_seconds, verdicts, took, banned, other,
                         probe_publish(port, key, source=other))  # fmt: skip

    return await asyncio.to_thread(run)


# ------------------------------------------------------------------ a crowd of MP4 downloads
@dataclass(frozen=True)
class Reply:
    """What a test needs of an HTTP response (a whole MP4 does not cross a process boundary)."""

    status: int
    retry_after: str
    digest: str  # sha256 of the body
    head: bytes  # its first 16 bytes

    @classmethod
    def of(cls, r: httpx.Response) -> Reply:
        return cls(r.status_code, r.headers.get("retry-after", ""), hashlib.sha256(r.content).hexdigest(), r.content[:16])


@dataclass
class Downloads:
    max_per_ip: int
    same_ip: list[Reply]
    took: float
    many_ips: list[Reply]
    again: Reply
    builds: list[float]  # MP4 files made after the crowds, after the request again
    most_work_dirs: int
    left_in_work: list[Path]
    stored: list[Path]

    def check(self) -> None:
        ok = [r for r in self.same_ip if r.status == 200]
        limited = [r for r in self.same_ip if r.status == 429]
        assert len(ok) + len(limited) == len(self.same_ip), collections.Counter(r.status for r in self.same_ip)
        assert 1 <= len(ok) <= self.max_per_ip
        assert all(r.retry_after.isdigit() for r in limited)
        assert len({r.digest for r in ok}) == 1 and ok[0].head[4:8] == b"ftyp"
        served = sum(r.status == 200 for r in self.many_ips)
        assert {r.status for r in self.many_ips} <= {200, 429} and 1 <= served <= 4
        assert self.builds == [2, 2]  # one per file, however many asked for it; then none: from the store
        assert self.most_work_dirs <= 1  # download_max_builds
        assert self.left_in_work == []
        assert self.again.status == 200 and self.again.digest == ok[0].digest
        assert len(self.stored) == 2 and all(p.suffix == ".mp4" for p in self.stored)

    def figures(self) -> str:
        def count(rs: list[Reply], status: int) -> int:
            return sum(r.status == status for r in rs)

        return (f"downloads: {len(self.same_ip)} at once from one address: {count(self.same_ip, 200)} served, "
                f"{count(self.same_ip, 429)} refused (429) in {self.took:.2f} s; {len(self.many_ips)} addresses: "
                f"{count(self.many_ips, 200)} served, {count(self.many_ips, 429)} refused; {self.builds[0]:.0f} "
                f"ffmpeg runs; at most {self.most_work_dirs} work dir(s) at once, {len(self.left_in_work)} left")  # fmt: skip


async def download_crowd(url: str, work_dir: Path, stored_dir: Path, builds: Callable[[], float], source: str,
                         n: int, others: Sequence[str], again_from: str, max_per_ip: int) -> Downloads:  # fmt: skip
    """``n`` requests at once from ``source`` for a broadcast's MP4 (``url``), then one for
    its first 2 s from each of ``others``, then the whole file again from ``again_from``.
    The work directory's entries are counted every 20 ms meanwhile; ``builds`` reads the
    server's count of MP4 files made."""
    most = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal most
        for _ in range(30_000):  # 10 minutes at most
            if sampling.wait(0.02):
                return
            most = max(most, sum(1 for _ in work_dir.iterdir()))

    tls = ssl.create_default_context()  # made once: one per client would take the event loop ~1 s

    async def crowd(sources: Sequence[str], params: dict[str, str]) -> list[Reply]:
        async def one(src: str) -> Reply:
            transport = httpx.AsyncHTTPTransport(local_address=src, verify=tls)
            async with httpx.AsyncClient(transport=transport, timeout=60) as c:
                return Reply.of(await c.get(url, params=params))

        return await asyncio.gather(*(one(src) for src in sources))

    builds0 = await asyncio.to_thread(builds)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        t0 = time.monotonic()
        same_ip = await crowd([source] * n, {})
        took = time.monotonic() - t0
        many_ips = await crowd(others, {"start": "0", "end": "2"})
    finally:
        sampling.set()
        await asyncio.to_thread(sampler.join, 5)
    built = await asyncio.to_thread(builds) - builds0
    (again,) = await crowd([again_from], {})
    built_again = await asyncio.to_thread(builds) - builds0

    def listing(path: Path) -> list[Path]:
        with contextlib.suppress(FileNotFoundError):
            return list(path.iterdir())
        return []

    left, stored = await asyncio.to_thread(listing, work_dir), await asyncio.to_thread(listing, stored_dir)
    return Downloads(max_per_ip, same_ip, took, many_ips, again, [built, built_again], most, left, stored)


# ------------------------------------------------------------------ the server's metrics
@dataclass(frozen=True)
class Metric:
    """Reads one metric (summed over its labels) from a server's /metrics: a callable an
    attack in another process can be handed."""

    http: str  # the server's base URL
    token: str  # its admin token
    name: str

    def __call__(self) -> float:
        r = httpx.get(f"{self.http}/metrics", headers={"authorization": f"Bearer {self.token}"}, timeout=5)
        pattern = rf"^{re.escape(self.name)}(?:{{[^}}]*}})? (\S+)$"
        return sum(float(v) for v in re.findall(pattern, r.text, re.M))


# ------------------------------------------------------------------ attacks in processes of their own
AttackFn = Callable[..., Coroutine[Any, Any, Any]]


def _run_attack(send: Connection, ready: EventType, go: EventType, after: Sequence[EventType],
                opened: EventType | None, fn: AttackFn, args: tuple[Any, ...]) -> None:  # fmt: skip
    """A spawned process: ready, then (once ``go`` and every ``after`` are set) the attack;
    sends back ("ok", its result, when it ended) or ("error", the traceback)."""
    ready.set()
    try:
        if not go.wait(300) or not all(e.wait(120) for e in after):
            raise TimeoutError("never told to start")
        result = asyncio.run(fn(*args, **({"opened": opened.set} if opened is not None else {})))
        send.send(("ok", result, time.monotonic()))
    except Exception:
        send.send(("error", traceback.format_exc()))
        raise
    finally:
        send.close()


class Attacker:
    """One attack, ``fn(*args)``, in a process of its own (spawned: its own interpreter and
    event loop), so that the clients of one attack do not hold up another's, nor the
    test's own clients: every figure is the server's. Started at once; the attack begins
    when ``go`` and every event in ``after`` are set. ``holds``: ``fn`` takes ``opened``,
    and ``self.opened`` is set once its first wave is open."""

    def __init__(self, go: EventType, fn: AttackFn, *args: Any, holds: bool = False,
                 after: Sequence[EventType] = ()) -> None:  # fmt: skip
        ctx = multiprocessing.get_context("spawn")
        self.name = fn.__name__
        self.ready = ctx.Event()
        self.opened = ctx.Event()
        self._results, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_run_attack, name=f"attack-{self.name}", daemon=True,
                                args=(send, self.ready, go, list(after), self.opened if holds else None, fn, args))  # fmt: skip
        self.proc.start()
        send.close()
        self._got: tuple[Any, ...] | None = None

    def done(self) -> bool:
        if self._got is None and self._results.poll(0):
            self._got = self._results.recv()
        return self._got is not None or not self.proc.is_alive()

    def result(self, timeout: float) -> tuple[Any, float]:
        """(what the attack returned, when it ended: ``time.monotonic()``, one clock for
        every process)."""
        if self._got is None:
            if not self._results.poll(timeout):
                raise AssertionError(f"{self.name}: no result within {timeout:g} s")
            self._got = self._results.recv()
        if self._got[0] != "ok":
            raise AssertionError(f"{self.name} failed:\n{self._got[1]}")
        _, value, ended = self._got
        return value, ended

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(10)
        self._results.close()
