"""Starting the origin's HTTP server: uvicorn on one socket, the sendfile fast path in front.

``start_http`` serves the app on the configured address and returns once it
accepts connections. For a local store, GET/HEAD of stored HLS objects are
answered by the fast path (``origin/fastpath.py``) and everything else is
handed to uvicorn; for a remote store everything goes through the app.

``start_https`` serves the same app over TLS on ``https_port`` once a
certificate is configured. Everything there goes through the app: the fast
path writes to the raw socket with ``sendfile(2)``, which TLS cannot take
(kernel TLS would be the way to bring it back).

On every listener each connection is admitted by the node's ``ConnectionTable``
(caps per address and in all, shared by HTTP and HTTPS) and each request head
has one deadline (``origin/guard.py``), before anything else (the playback
guard included) sees the request. On HTTPS the head clock starts once the TLS
handshake is done (asyncio's handshake timeout bounds that part).

uvicorn's own proxy-header handling is off: it believes ``X-Forwarded-For`` from
127.0.0.1 by default; tidecast reads it only from ``trusted_proxies``
(``tidecast.netaddr``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from tidecast.config import Settings
from tidecast.netaddr import TrustedProxies, parse_listen
from tidecast.origin.fastpath import fast_path_protocol
from tidecast.origin.guard import ConnectionTable, HTTPLimits, guarded_http
from tidecast.origin.playback import PlaybackGuard
from tidecast.origin.reload import ReloadService
from tidecast.store.factory import unwrap
from tidecast.store.local import LocalStore


class _EmbeddedHTTPServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_limits(settings: Settings) -> HTTPLimits:
    return HTTPLimits(settings.http_max_connections, settings.http_max_per_ip, settings.http_head_timeout,
                      TrustedProxies.parse(settings.trusted_proxies))  # fmt: skip


def connection_table(settings: Settings) -> ConnectionTable:
    """The node's HTTP connections, one table for its HTTP and HTTPS listeners."""
    return ConnectionTable(http_limits(settings))


def http_protocol(
    store: object, reload: ReloadService | None = None, guard: PlaybackGuard | None = None,
    table: ConnectionTable | None = None, head_timeout: float = 10.0,
) -> type[asyncio.Protocol]:  # fmt: skip
    """Stored HLS objects of a local store go out through the sendfile fast path
    (LL-HLS waits through ``reload`` there too); everything else (and a remote
    store's objects) through the app. Both admit connections through ``table``."""
    local = unwrap(store)
    if isinstance(local, LocalStore):
        return fast_path_protocol(local.root, reload, guard, table, head_timeout)
    return guarded_http(table, head_timeout)


async def start_http(
    app: object, settings: Settings, store: object, reload: ReloadService | None = None,
    guard: PlaybackGuard | None = None, table: ConnectionTable | None = None,
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:  # fmt: skip
    """Serve ``app`` on the configured address (the fast path in front for a local
    store); returns once it accepts connections: (server, its task, bound port).
    ``table``: the node's connections (default: a table of this listener's own)."""
    sock = _bind(settings.host, settings.http_port)
    if table is None:
        table = connection_table(settings)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", ws_max_size=16 * 1024,  # type: ignore[arg-type]
        timeout_graceful_shutdown=2, http=http_protocol(store, reload, guard, table, settings.http_head_timeout),
        proxy_headers=False,
    )  # fmt: skip
    return await _serve(config, sock)


async def start_operator_http(app: object, settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The operator listener (``operator_listen``): a small app of its own, same head deadline."""
    host, port = parse_listen(settings.operator_listen)
    sock = _bind(host, port)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off",  # type: ignore[arg-type]
        timeout_graceful_shutdown=2, http=guarded_http(None, settings.http_head_timeout),
        proxy_headers=False, ws="none",
    )  # fmt: skip
    return await _serve(config, sock)


async def _serve(config: uvicorn.Config, sock: socket.socket,
                 name: str = "http") -> tuple[uvicorn.Server, asyncio.Task[None], int]:  # fmt: skip
    server = _EmbeddedHTTPServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    while not server.started:
        if task.done():
            sock.close()
            await task
            raise RuntimeError(f"{name.upper()} server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


async def start_https(
    app: object, settings: Settings, table: ConnectionTable | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The app over TLS on ``settings.https_port`` (certificate from the settings), with
    the same caps (``table``: the node's, shared with ``start_http``) and head deadline."""
    sock = _bind(settings.host, settings.https_port)
    if table is None:
        table = connection_table(settings)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", ws_max_size=16 * 1024,  # type: ignore[arg-type]
        timeout_graceful_shutdown=2, http=guarded_http(table, settings.http_head_timeout),
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key or None,
        proxy_headers=False,  # uvicorn would believe X-Forwarded-For from 127.0.0.1
    )  # fmt: skip
    return await _serve(config, sock, "https")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle off only on sockets that say so,
    # and small responses written in two parts must not wait for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
