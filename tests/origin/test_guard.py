"""HTTP connection limits over real sockets against the real listener (uvicorn, the fast path
in front for a local store; uvicorn's own protocol for a remote one): a request head has one
deadline however its bytes trickle in, idle connections go, and the per-address and global
caps refuse what is over them while another address still gets in. Client sockets are bound
to other loopback addresses (127.0.0.2, ...) to be other clients. The HTTPS listener has the
same deadline and shares the caps with HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI

from tidecast.config import Settings
from tidecast.origin.server import start_http
from tidecast.store.local import LocalStore

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def listener(tmp_path: Path, local: bool, **limits: object) -> AsyncIterator[int]:
    app = FastAPI()

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    media = tmp_path / "media"
    (media / "hls" / "s").mkdir(parents=True)
    (media / "hls" / "s" / "a.m3u8").write_bytes(b"#EXTM3U\n")
    settings = Settings(host="127.0.0.1", http_port=0, data_dir=tmp_path, **limits)  # type: ignore[arg-type]
    store = LocalStore(media) if local else object()
    server, task, port = await start_http(app, settings, store)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def connect(port: int, source: str = "127.0.0.1") -> Conn:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)


async def status_of(conn: Conn, request: bytes | None = None, timeout: float = 5) -> int | None:
    """The status of the next response (None: closed without one)."""
    reader, writer = conn
    if request is not None:
        writer.write(request)
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
            if not line.startswith(b"HTTP/1.1 "):
                return None
            length = 0
            while (h := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = h.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    return int(line.split()[1])


async def closed(conn: Conn, timeout: float) -> bool:
    reader, _ = conn
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


GET_HLS = b"GET /hls/s/a.m3u8 HTTP/1.1\r\nHost: t\r\n\r\n"
GET_API = b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize("local", [True, False], ids=["fast-path", "app"])
async def test_a_trickled_head_gets_one_deadline_not_one_per_byte(tmp_path: Path, local: bool) -> None:
    async with listener(tmp_path, local, http_head_timeout=1.0) as port:
        conn = await connect(port)
        t0 = time.monotonic()
        reader, writer = conn

        async def trickle() -> None:
            for b in GET_API[:-2]:  # never the final CRLF
                writer.write(bytes([b]))
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(trickle())
        try:
            line = await asyncio.wait_for(reader.readline(), 4)
        finally:
            sender.cancel()
        took = time.monotonic() - t0
        assert line.startswith(b"HTTP/1.1 408"), line
        assert 0.9 <= took < 2.0, took
        assert await closed(conn, 2)

        # a connection that sends nothing goes too; one that sends its head in time is served
        idle = await connect(port)
        assert await closed(idle, 3)
        ok = await connect(port)
        assert await status_of(ok, GET_HLS if local else GET_API) == 200
        # ... and its next request has a deadline of its own
        t0 = time.monotonic()
        ok[1].write(b"GET /hls/s/a.m3u8 HTTP/1.1\r\n")
        assert await closed(ok, 4)
        assert time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("local", [True, False], ids=["fast-path", "app"])
async def test_per_address_and_global_caps(tmp_path: Path, local: bool) -> None:
    async with listener(tmp_path, local, http_head_timeout=20.0, http_max_per_ip=3, http_max_connections=5) as port:
        held = [await connect(port, "127.0.0.2") for _ in range(3)]
        await asyncio.sleep(0.1)  # accepted, idle
        over = await connect(port, "127.0.0.2")
        assert await status_of(over, None) == 429
        assert await closed(over, 2)
        # another address still gets in, and is served
        other = await connect(port, "127.0.0.3")
        if local:
            assert await status_of(other, GET_HLS) == 200
        assert await status_of(other, GET_API) == 200  # (fast path: handed to the app)
        # one closed on .2 frees its slot
        held[0][1].close()
        await asyncio.sleep(0.2)
        again = await connect(port, "127.0.0.2")
        assert await status_of(again, GET_API) == 200
        held[0] = again
        # the global cap: 3 on .2 + 1 on .3 + 1 on .4 = 5; the sixth is refused whoever it is
        fifth = await connect(port, "127.0.0.4")
        assert await status_of(fifth, GET_API) == 200
        sixth = await connect(port, "127.0.0.5")
        assert await status_of(sixth, None) == 503
        for _, w in [*held, other, fifth]:
            w.close()


async def test_trusted_proxies_are_exempt_from_the_per_address_cap(tmp_path: Path) -> None:
    async with listener(tmp_path, True, http_head_timeout=20.0, http_max_per_ip=2,
                        trusted_proxies="127.0.0.6/32") as port:  # fmt: skip
        edge = [await connect(port, "127.0.0.6") for _ in range(6)]
        for c in edge:
            assert await status_of(c, GET_HLS) == 200
        for _, w in edge:
            w.close()


async def test_https_has_the_head_deadline_and_shares_the_nodes_caps(tmp_path: Path) -> None:
    import ssl

    from tidecast.origin.server import connection_table, start_https
    from tidecast.tls import make_self_signed

    app = FastAPI()

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    cert, key = make_self_signed(tmp_path / "tls")
    settings = Settings(host="127.0.0.1", http_port=0, https_port=0, data_dir=tmp_path, tls_cert=str(cert),
                        tls_key=str(key), http_head_timeout=1.0, http_max_per_ip=2)  # fmt: skip
    table = connection_table(settings)  # one table for both listeners, as OriginNode has
    http, http_task, http_port = await start_http(app, settings, object(), table=table)
    https, https_task, https_port = await start_https(app, settings, table)
    tls = ssl.create_default_context(cafile=str(cert))

    async def tls_connect(source: str) -> Conn:
        return await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", https_port, ssl=tls, server_hostname="localhost", local_addr=(source, 0)), 5)  # fmt: skip

    try:
        ok = await tls_connect("127.0.0.2")
        assert await status_of(ok, GET_API) == 200
        # a head that never ends: 408 at the deadline, as on plain HTTP
        slow = await tls_connect("127.0.0.3")
        t0 = time.monotonic()
        slow[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\n")
        assert await status_of(slow, None, timeout=4) == 408
        assert 0.9 <= time.monotonic() - t0 < 2.5
        # the per-address cap counts HTTP and HTTPS connections together
        plain = await connect(http_port, "127.0.0.2")
        assert await status_of(plain, GET_API) == 200
        over = await tls_connect("127.0.0.2")
        assert await status_of(over, None) == 429
        for _, w in (ok, plain, over, slow):
            w.close()
    finally:
        for server in (http, https):
            server.should_exit = True
        await asyncio.wait_for(asyncio.gather(http_task, https_task), 10)
