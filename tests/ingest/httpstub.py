"""A real HTTP server for tests that need one to call: webhooks and a JWKS endpoint.

``StubServer`` runs ``http.server`` in a thread on a free loopback port. Each
request's JSON body is recorded; the answer comes from ``answer(path, body)``
-> (status, body bytes, delay seconds). Every wait is bounded: a delayed
answer sleeps at most ``delay`` and the server stops within a second.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, bytes, float]


class StubServer:
    def __init__(self, answer: Callable[[str, Any], Answer]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: Any) -> None:
                with stub._lock:
                    stub.requests.append((self.path, body))
                status, data, delay = stub.answer(self.path, body)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the caller gave up waiting: what a slow hook is for

            def do_GET(self) -> None:
                self._reply(None)

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(min(n, 1 << 20))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                self._reply(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the tests assert on ``requests``

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       daemon=True)  # fmt: skip

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[Any]:
        with self._lock:
            return [b for p, b in self.requests if p == path]

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
