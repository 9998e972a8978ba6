"""Who may publish: stream keys, ingest tokens, address rules, bans and the webhook.

Every ingest protocol asks the same questions through ``IngestAuth``, the
publish gate's policy (``ingest/sessions.py``):

1. ``address_refusal(ip)`` — as soon as a client says who it wants to be
   (RTMP ``connect``): is the address banned, or outside the global CIDR lists?
2. ``admit(name, ip, app, protocol)`` — at ``publish``: the name is a stream key
   (``sk_...``), an ingest JWT (``ingest/tokens.py``), or ``<stream>?token=<JWT>``.
   The credential must name a stream, and the address must pass that stream's own
   CIDR lists. A credential that does not verify counts as a failed attempt
   against the address (``ingest/bans.py``); enough of them ban it.
3. ``approve(admission)`` — the ``on_publish`` webhook (``ingest/webhooks.py``),
   once the gate knows the stream can take this publisher.
4. ``done(admission, reason)`` — ``on_publish_done`` when the publish ends.

A refusal is a ``PublishRefused`` whose ``description`` is sent to the publisher
in the RTMP error; each is logged here with the address and the reason. The
decisions are plain code over the database lookups and the webhook's answer,
with the clock passed in, so each rule has a unit test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from tidecast.db.repo import Database, StreamInfo, StreamNotFound, hash_key
from tidecast.ingest.access import AccessRuleError, AddressRules
from tidecast.ingest.bans import BanStore, MemoryBans
from tidecast.ingest.tokens import IngestTokens, TokenRefused, looks_like_jwt
from tidecast.ingest.webhooks import HookEvent, Webhooks

log = logging.getLogger("tidecast.ingest.auth")

BAD_NAME = "NetStream.Publish.BadName"
MAX_NAME = 8192  # characters of a publish name considered at all


class PublishRefused(Exception):
    """A publish request that must be refused; ``code`` is the RTMP status code to send."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True, slots=True)
class Admission:
    stream: StreamInfo
    key_id: str  # "key:<12 hex of the key's hash>" or "jwt:<jti>"
    ip: str
    app: str
    protocol: str

    def hook_event(self) -> HookEvent:
        return HookEvent(self.stream.name, self.app, self.ip, self.key_id, self.protocol)


def split_credential(name: str) -> tuple[str, str]:
    """A publish name -> (credential, stream named beside it or ""):
    ``sk_x`` -> (``sk_x``, ""); ``main?token=eyJ..`` -> (``eyJ..``, ``main``)."""
    path, _, query = name[:MAX_NAME].partition("?")
    params = parse_qs(query, max_num_fields=16) if query else {}
    token = (params.get("token") or params.get("jwt") or [""])[0]
    if token:
        return token, path
    return path, ""


class IngestAuth:
    def __init__(
        self, db: Database, *, tokens: IngestTokens | None = None, rules: AddressRules | None = None,
        bans: BanStore | None = None, webhooks: Webhooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.db = db
        self.tokens = tokens
        self.rules = rules or AddressRules()
        self.bans: BanStore = bans if bans is not None else MemoryBans()
        self.webhooks = webhooks
        self.clock = clock
        self.refused = 0
        self.failures = 0

    # -- 1. the address ----------------------------------------------------------
    def address_refusal(self, ip: str) -> str | None:
        """Why this address may not publish at all right now, or None."""
        until = self.bans.banned_until(ip, self.clock())
        if until is not None:
            return (f"address {ip} is banned for {until - self.clock():.0f} s "
                    "after too many failed publish attempts")  # fmt: skip
        return self.rules.refusal(ip)

    def _refuse(
        self, ip: str, description: str, *, failed: bool, stream: str = ""
    ) -> PublishRefused:
        self.refused += 1
        what = f" to {stream!r}" if stream else ""
        log.warning("refused publish%s from %s: %s", what, ip, description)
        if failed:
            self.failures += 1
            until = self.bans.failed(ip, self.clock())
            if until is not None:
                log.warning("banned %s for %.0f s after too many failed publish attempts",
                            ip, until - self.clock())  # fmt: skip
        return PublishRefused(BAD_NAME, description)

    # -- 2. the credential -------------------------------------------------------
    async def admit(self, name: str, ip: str, app: str, protocol: str) -> Admission:
        refusal = self.address_refusal(ip)
        if refusal is not None:
            raise self._refuse(ip, refusal, failed=False)
        credential, named = split_credential(name)
        if not credential:
            raise self._refuse(ip, "a stream key is required", failed=True)
        if looks_like_jwt(credential):
            stream, key_id = await self._from_token(credential, named, ip)
        else:
            found = await asyncio.to_thread(self.db.stream_for_key, credential)
            if found is None:
                raise self._refuse(ip, "unknown stream key", failed=True)
            stream, key_id = found, "key:" + hash_key(credential)[:12]
        try:
            own = AddressRules.parse(stream.ingest_allow, stream.ingest_deny)
        except AccessRuleError as exc:  # stored before validation existed: refuse, say why
            raise self._refuse(ip, f"stream's address rules are invalid: {exc}", failed=False,
                               stream=stream.name) from None  # fmt: skip
        refusal = own.refusal(ip)
        if refusal is not None:
            raise self._refuse(ip, f"{refusal} for stream {stream.name!r}", failed=False,
                               stream=stream.name)  # fmt: skip
        return Admission(stream, key_id, ip, app, protocol)

    async def _from_token(self, token: str, named: str, ip: str) -> tuple[StreamInfo, str]:
        if self.tokens is None:
            raise self._refuse(ip, "ingest tokens are not enabled here", failed=True)
        try:
            claims = await self.tokens.verify(token)
        except TokenRefused as exc:
            raise self._refuse(ip, exc.description, failed=True) from None
        if named and named != claims.stream:
            raise self._refuse(ip, f"token is for stream {claims.stream[:64]!r}, not {named[:64]!r}",
                               failed=True)  # fmt: skip
        try:
            stream = await asyncio.to_thread(self.db.get_stream, claims.stream)
        except StreamNotFound:
            raise self._refuse(ip, f"token names no known stream ({claims.stream[:64]!r})",
                               failed=True) from None  # fmt: skip
        return stream, claims.key_id

    # -- 3. the webhook ----------------------------------------------------------
    async def approve(self, admission: Admission) -> None:
        if self.webhooks is None:
            return
        decision = await self.webhooks.on_publish(admission.hook_event())
        if not decision.allowed:
            # a webhook that says no is a failed attempt; one that does not answer is not
            raise self._refuse(admission.ip, decision.reason, failed=decision.answered,
                               stream=admission.stream.name)  # fmt: skip
        if not decision.answered:
            log.warning(
                "%s: %s (publish from %s)", admission.stream.name, decision.reason, admission.ip
            )

    # -- 4. the end --------------------------------------------------------------
    def done(self, admission: Admission, reason: str) -> None:
        if self.webhooks is not None:
            self.webhooks.on_publish_done(admission.hook_event(), reason)

    async def aclose(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.aclose()
