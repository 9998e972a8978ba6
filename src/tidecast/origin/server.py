"""Starting the origin's HTTP server: uvicorn on one socket, the sendfile fast path in front.

``start_http`` serves the app on the configured address and returns once it
accepts connections. For a local store, GET/HEAD of stored HLS objects are
answered by the fast path (``origin/fastpath.py``) and everything else is
handed to uvicorn; for a remote store everything goes through the app.

``start_https`` serves the same app over TLS on ``https_port`` once a
certificate is configured. Everything there goes through the app: the fast
path writes to the raw socket with ``sendfile(2)``, which TLS cannot take
(kernel TLS would be the way to bring it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from tidecast.config import Settings
from tidecast.origin.fastpath import fast_path_protocol
from tidecast.origin.playback import PlaybackGuard
from tidecast.origin.reload import ReloadService
from tidecast.store.factory import unwrap
from tidecast.store.local import LocalStore


class _EmbeddedHTTPServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_protocol(
    store: object, reload: ReloadService | None = None, guard: PlaybackGuard | None = None
) -> type[asyncio.Protocol] | str:
    """Stored HLS objects of a local store go out through the sendfile fast path
    (LL-HLS waits through ``reload`` there too); everything else (and a remote
    store's objects) through the app."""
    local = unwrap(store)
    if isinstance(local, LocalStore):
        return fast_path_protocol(local.root, reload, guard)
    return "httptools"


async def start_http(
    app: object, settings: Settings, store: object, reload: ReloadService | None = None,
    guard: PlaybackGuard | None = None,
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:  # fmt: skip
    """Serve ``app`` on the configured address (the fast path in front for a local
    store); returns once it accepts connections: (server, its task, bound port)."""
    sock = _bind(settings.host, settings.http_port)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", ws_max_size=16 * 1024,  # type: ignore[arg-type]
        timeout_graceful_shutdown=2, http=http_protocol(store, reload, guard),
    )  # fmt: skip
    server = _EmbeddedHTTPServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


async def start_https(app: object, settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The app over TLS on ``settings.https_port`` (certificate from the settings)."""
    sock = _bind(settings.host, settings.https_port)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", ws_max_size=16 * 1024,  # type: ignore[arg-type]
        timeout_graceful_shutdown=2, http="httptools",
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key or None,
        proxy_headers=False,  # uvicorn would believe X-Forwarded-For from 127.0.0.1
    )  # fmt: skip
    server = _EmbeddedHTTPServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="https")
    while not server.started:
        if task.done():
            sock.close()
            await task
            raise RuntimeError("HTTPS server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


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
