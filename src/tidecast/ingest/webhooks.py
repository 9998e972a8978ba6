"""``on_publish`` / ``on_publish_done`` webhooks, as nginx-rtmp and SRS call them.

Before a publish starts, tidecast POSTs JSON to ``on_publish_url``:

    {"action": "on_publish", "stream": "main", "app": "live", "client_ip": "203.0.113.9",
     "key_id": "key:1a2b3c4d5e6f", "protocol": "rtmps", "time": 1767225600.0}

A 2xx answer allows the publish; any other status refuses it (its body, up to
200 characters, goes into the refusal). No answer within ``webhook_timeout``
seconds — a timeout, or the hook unreachable — is decided by
``webhook_timeout_rule``: ``deny`` (the default) or ``allow``.

When the publish ends, ``on_publish_done_url`` gets the same body with
``"action": "on_publish_done"`` and a ``"reason"``; its answer is only logged.
Those calls run as tasks of their own, bounded by the same timeout, and
``aclose`` waits for the ones still running.

``decide`` is the rule, without I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger("tidecast.ingest.webhooks")

MAX_REASON = 200
MAX_PENDING_DONE = 1000  # on_publish_done calls in flight; more are dropped (counted)


@dataclass(frozen=True, slots=True)
class HookEvent:
    stream: str
    app: str
    client_ip: str
    key_id: str
    protocol: str

    def body(self, action: str, **extra: object) -> dict[str, object]:
        return {"action": action, "stream": self.stream, "app": self.app,
                "client_ip": self.client_ip, "key_id": self.key_id, "protocol": self.protocol,
                "time": round(time.time(), 3), **extra}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    answered: bool = True  # False: a timeout or an unreachable hook, decided by the rule


def decide(status: int | None, body: str, failure: str | None, timeout_rule: str) -> Decision:
    """``status`` None means no answer (``failure`` says what happened)."""
    if status is None:
        allowed = timeout_rule == "allow"
        what = "allowed" if allowed else "refused"
        return Decision(
            allowed,
            f"on_publish webhook did not answer ({failure}); {what} by rule",
            answered=False,
        )
    if 200 <= status < 300:
        return Decision(True, f"on_publish webhook answered {status}")
    detail = " ".join(body.split())[:MAX_REASON]
    return Decision(
        False, f"refused by the on_publish webhook ({status}{': ' + detail if detail else ''})"
    )


class Webhooks:
    def __init__(self, on_publish_url: str = "", on_publish_done_url: str = "",
                 timeout: float = 3.0, timeout_rule: str = "deny") -> None:  # fmt: skip
        self.on_publish_url = on_publish_url
        self.on_publish_done_url = on_publish_done_url
        self.timeout = timeout
        self.timeout_rule = timeout_rule
        self._client: httpx.AsyncClient | None = None
        self._done: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.unanswered = 0
        self.dropped = 0

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=8)
            self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits)
        return self._client

    async def on_publish(self, event: HookEvent) -> Decision:
        if not self.on_publish_url:
            return Decision(True, "no on_publish webhook")
        status, body, failure = await self._post(self.on_publish_url, event.body("on_publish"))
        return decide(status, body, failure, self.timeout_rule)

    def on_publish_done(self, event: HookEvent, reason: str) -> None:
        """Announce the end of a publish, in the background (bounded by the timeout)."""
        if not self.on_publish_done_url:
            return
        if len(self._done) >= MAX_PENDING_DONE:
            self.dropped += 1
            log.warning(
                "%s: on_publish_done not sent: %d calls in flight", event.stream, len(self._done)
            )
            return
        task = asyncio.create_task(
            self._done_call(event, reason), name=f"on_publish_done-{event.stream}"
        )
        self._done.add(task)
        task.add_done_callback(self._done.discard)

    async def _done_call(self, event: HookEvent, reason: str) -> None:
        status, _, failure = await self._post(self.on_publish_done_url,
                                              event.body("on_publish_done", reason=reason))  # fmt: skip
        if status is None or not 200 <= status < 300:
            log.warning(
                "%s: on_publish_done webhook: %s", event.stream, failure or f"answered {status}"
            )

    async def _post(self, url: str, body: dict[str, object]) -> tuple[int | None, str, str | None]:
        self.calls += 1
        try:
            # the client's timeout bounds each phase; this bounds the whole call
            async with asyncio.timeout(self.timeout):
                r = await self.client().post(url, json=body)
        except TimeoutError:
            self.unanswered += 1
            return None, "", f"no answer within {self.timeout:g} s"
        except httpx.TimeoutException:
            self.unanswered += 1
            return None, "", f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            self.unanswered += 1
            return None, "", f"{type(exc).__name__}: {exc}"
        return r.status_code, r.text[: MAX_REASON * 4], None

    async def aclose(self) -> None:
        if self._done:
            await asyncio.wait(set(self._done), timeout=self.timeout + 1)
        for task in list(self._done):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
