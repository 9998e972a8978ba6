"""The HTTP application: HLS objects at /hls, web pages, and the JSON API at /api/v1.

API calls that change anything need ``Authorization: Bearer <admin token>``;
listing streams, reading a stream's live status and watching are public. The
operator endpoints (``/metrics``, ``/api/v1/transcode``) need the admin token
here; ``operator_app`` serves them without one on a separate bind address
(``operator_listen``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from tidecast import __version__, keys
from tidecast.access import tokens
from tidecast.chat.hub import ChatHub
from tidecast.config import Settings
from tidecast.db.repo import Database, InvalidName, NameTaken, StreamNotFound
from tidecast.ingest.tokens import IngestTokens
from tidecast.limits import Slots
from tidecast.live import LiveStatus
from tidecast.netaddr import TrustedProxies
from tidecast.origin import files
from tidecast.origin.blocking import parse_part_key
from tidecast.origin.cache import HotCache
from tidecast.origin.chat import chat_routes
from tidecast.origin.ingest_api import ingest_router
from tidecast.origin.metrics import metrics_router
from tidecast.origin.playback import Decision, Loader, PlaybackGuard, local_loader, serve_special
from tidecast.origin.playback_api import PlaybackGate, playback_router
from tidecast.origin.recordings import recordings_router, video_pages
from tidecast.origin.reload import PartOutcome, ReloadService, served_reply
from tidecast.recorder.download import Downloads
from tidecast.recorder.service import Recorder
from tidecast.store.base import ObjectNotFound
from tidecast.store.retrying import is_transient as store_transient

log = logging.getLogger("tidecast.origin")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
CORS = {
    "access-control-allow-origin": "*",
    "access-control-expose-headers": "Content-Length, Content-Range, ETag, Age",
}


def find_vendor_dir() -> Path | None:
    """Where npm installed the browser packages (hls.js): <repo>/web/node_modules."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "web" / "node_modules"
        if (candidate / "hls.js" / "dist" / "hls.min.js").is_file():
            return candidate
    return None


class TranscodeStatus(Protocol):
    """What the API shows of the transcode workers in this process."""

    def snapshot(self) -> dict[str, object]: ...


@dataclass(slots=True)
class AppContext:
    settings: Settings
    db: Database
    live: LiveStatus  # the ingest's own publishers, or (origin role) open broadcasts in the db
    admin_token: str
    started_at: float
    transcoder: TranscodeStatus | None = None
    recorder: Recorder | None = None
    chat: ChatHub | None = None
    chat_secret: bytes = b""
    # a remote store (S3) is read through the hot-object cache; None: the local media dir
    cache: HotCache | None = None
    media_root: Path | None = None  # a local store's directory (default: <data dir>/media)
    reload: ReloadService | None = None  # LL-HLS: blocking playlist reload, hinted parts
    ingest_tokens: IngestTokens | None = None  # issues ingest JWTs (POST .../ingest-tokens)
    guard: PlaybackGuard | None = None  # playback tokens, AES-128 (None: every stream public)
    proxies: TrustedProxies = TrustedProxies()  # whose X-Forwarded-For is believed
    downloads: Downloads | None = None  # MP4 downloads, made once (needs ``recorder``)


def request_ip(proxies: TrustedProxies, conn: Request | WebSocket) -> str:
    """The client address of a request or WebSocket (``tidecast.netaddr``)."""
    peer = conn.client.host if conn.client else "?"
    return proxies.client_ip(peer, conn.headers.get("x-forwarded-for"))


def request_scheme(proxies: TrustedProxies, request: Request) -> str:
    """``https`` or ``http`` as the client reached us: a trusted edge's ``X-Forwarded-Proto``
    (it may end TLS), else this connection's scheme."""
    peer = request.client.host if request.client else "?"
    forwarded = request.headers.get("x-forwarded-proto", "").lower()
    if forwarded in ("http", "https") and proxies.trusts(peer):
        return forwarded
    return request.url.scheme


def _transcode_route(ctx: AppContext, router: APIRouter, dependencies: list[object]) -> None:
    @router.get("/api/v1/transcode", dependencies=dependencies, responses={401: {}})  # type: ignore[arg-type]
    async def transcode_status() -> dict[str, object]:
        """Worker pool: pids, current jobs, done/failed/dead-lettered counters (operator)."""
        if ctx.transcoder is None:
            return {"enabled": False}
        return {"enabled": True, **ctx.transcoder.snapshot()}


def operator_app(ctx: AppContext) -> FastAPI:
    """``/metrics`` and ``/api/v1/transcode`` without a token: for ``operator_listen``, an
    address only operators (Prometheus) reach."""
    app = FastAPI(title="tidecast operator", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.include_router(metrics_router())
    router = APIRouter()
    _transcode_route(ctx, router, [])
    app.include_router(router)
    return app


# ---------------------------------------------------------------- API models
class StreamOut(BaseModel):
    name: str
    title: str
    live: bool
    started_at: float | None = Field(None, description="wall clock (epoch s) the broadcast began")
    broadcast: str | None = None
    video: str = ""
    audio: str = ""
    watch_url: str
    hls_url: str


class StreamCreate(BaseModel):
    name: str = Field(..., description="public name: lowercase letters, digits, - and _")
    title: str = ""


class StreamCreated(StreamOut):
    stream_key: str = Field(..., description="secret: shown once, only its hash is kept")
    publish_url: str


class Health(BaseModel):
    status: str
    version: str
    uptime_s: float
    live_streams: int


def create_app(ctx: AppContext) -> FastAPI:
    settings = ctx.settings
    media_root = (ctx.media_root or settings.media_dir).resolve()
    media_root.mkdir(parents=True, exist_ok=True)
    vendor = find_vendor_dir()
    if vendor is None:
        log.warning("hls.js is not installed (web/node_modules); run scripts/setup.sh")

    app = FastAPI(
        title="tidecast", version=__version__,
        openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None,
    )  # fmt: skip
    api = APIRouter(prefix="/api/v1")

    def stream_out(name: str, title: str) -> StreamOut:
        s = ctx.live.live().get(name)
        if s is not None and s.paused:  # the publisher left; the broadcast waits for it
            s = None
        return StreamOut(
            name=name, title=title, live=s is not None,
            started_at=s.started_at if s else None, broadcast=s.broadcast if s else None,
            video=s.video if s else "", audio=s.audio if s else "",
            watch_url=f"/watch/{name}", hls_url=keys.url_path(keys.live_master(name)),
        )  # fmt: skip

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), ctx.admin_token.encode()
        ):
            raise HTTPException(401, "admin token required", {"WWW-Authenticate": "Bearer"})

    @api.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(
            status="ok", version=__version__, uptime_s=round(time.time() - ctx.started_at, 3),
            live_streams=len(ctx.live.live()),
        )  # fmt: skip

    @api.get("/streams", response_model=list[StreamOut])
    async def list_streams(live: bool | None = None) -> list[StreamOut]:
        rows = await asyncio.to_thread(ctx.db.list_streams)
        out = [stream_out(r.name, r.title) for r in rows]
        return [s for s in out if live is None or s.live == live]

    @api.get("/streams/{name}", response_model=StreamOut, responses={404: {}})
    async def get_stream(name: str) -> StreamOut:
        try:
            row = await asyncio.to_thread(ctx.db.get_stream, name)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        return stream_out(row.name, row.title)

    @api.post(
        "/streams", response_model=StreamCreated, status_code=201,
        dependencies=[Depends(require_admin)], responses={401: {}, 409: {}, 422: {}},
    )  # fmt: skip
    async def create_stream(body: StreamCreate) -> StreamCreated:
        try:
            new = await asyncio.to_thread(ctx.db.create_stream, body.name, body.title)
        except InvalidName as exc:
            raise HTTPException(422, str(exc)) from None
        except NameTaken as exc:
            raise HTTPException(409, str(exc)) from None
        base = stream_out(new.stream.name, new.stream.title)
        return StreamCreated(
            **base.model_dump(), stream_key=new.key,
            publish_url=settings.publish_url(),
        )  # fmt: skip

    app.include_router(api)
    if ctx.ingest_tokens is not None:
        app.include_router(ingest_router(ctx.db, ctx.ingest_tokens, settings, require_admin))
    if ctx.guard is not None:
        app.include_router(playback_router(ctx.guard, settings, require_admin,
                                           lambda r: request_ip(ctx.proxies, r),
                                           lambda r: request_scheme(ctx.proxies, r)))  # fmt: skip
        app.add_middleware(PlaybackGate, guard=ctx.guard)  # downloads, chat, chat replay
    operator = APIRouter()
    _transcode_route(ctx, operator, [Depends(require_admin)])
    app.include_router(operator)
    app.include_router(metrics_router(dependencies=[Depends(require_admin)]))
    if ctx.chat is not None:
        app.include_router(chat_routes(ctx.chat, ctx.db, ctx.chat_secret, require_admin,
                                       lambda ws: request_ip(ctx.proxies, ws), settings.chat_join_timeout))  # fmt: skip
    if ctx.recorder is not None:
        downloads = ctx.downloads or Downloads(ctx.recorder.store, settings.data_dir / "download-tmp",
                                               max_builds=settings.download_max_builds)  # fmt: skip
        slots = Slots(settings.download_max_per_ip, settings.download_max_total)
        app.include_router(recordings_router(ctx.recorder, ctx.live, require_admin, downloads, slots,
                                             lambda r: request_ip(ctx.proxies, r)))  # fmt: skip
        app.include_router(video_pages(ctx.recorder, WEB_DIR))

    # ------------------------------------------------------------ HLS objects
    async def stored_object(path: str, raw: str, request: Request, head: bool) -> files.ServedObject:
        """A stored object as it is; LL-HLS waits first where the request asks for
        one (delivery directives) or the object is a part not stored yet."""
        target = files.resolve(media_root / "hls", raw, path)
        key = f"{keys.ROOT}/{path}"
        query = request.scope.get("query_string", b"").decode("latin-1")
        if ctx.reload is not None and "_HLS_" in query and path.endswith(".m3u8"):
            reply = await ctx.reload.playlist(key, query)
            if reply is not None:
                return served_reply(reply, request.headers, head)
        for attempt in range(2):
            try:
                if ctx.cache is not None:
                    obj = await ctx.cache.get(key)
                    return files.serve_bytes(path, obj.body, obj.etag, obj.mtime, request.headers, head)
                # hot files from memory, checked against the file each time
                hot = await files.HOT_FILES.get(media_root, target)
                return files.serve_hot(hot, request.headers, head)
            except (FileNotFoundError, ObjectNotFound):
                ref = parse_part_key(key)
                if ctx.reload is None or ref is None or attempt:
                    raise
                outcome = await ctx.reload.part(key, ref)  # perhaps the hinted part, not stored yet
                if outcome is PartOutcome.GONE:
                    raise
                if outcome is PartOutcome.TIMEOUT:
                    return files.ServedObject(503, {"retry-after": "1", "cache-control": "no-store",
                                                    "content-type": "application/json"},
                                              b'{"detail":"the part is not stored yet; try again"}')  # fmt: skip
                if ctx.cache is not None:
                    ctx.cache.forget_missing(key)
        raise AssertionError("unreachable")

    load: Loader
    if ctx.cache is not None:
        cache = ctx.cache

        async def load(key: str) -> tuple[bytes, str, float]:
            obj = await cache.get(key)
            return obj.body, obj.etag, obj.mtime
    else:
        load = local_loader(media_root)

    async def guarded(path: str, raw: str, request: Request, head: bool) -> files.ServedObject:
        """The playback guard's word first (tokens, encrypted broadcasts), then the object."""
        if ctx.guard is None:
            return await stored_object(path, raw, request, head)
        d: Decision = await ctx.guard.decide(path, request.headers.get("cookie", ""))
        if d.status:
            body = b"" if head else json.dumps({"detail": d.detail}).encode()
            return files.ServedObject(d.status, {"content-type": "application/json",
                                                 "cache-control": "no-store"}, body)  # fmt: skip
        raw_rest = tokens.split_path(raw[len("/hls/") :])[1] if raw.startswith("/hls/") else raw
        if d.special:
            files.resolve(media_root / "hls", "/hls/" + raw_rest, d.path)  # the same path rules
            query = request.scope.get("query_string", b"").decode("latin-1")
            return await serve_special(ctx.guard, d, load, request.headers, head, query, ctx.reload)
        served = await stored_object(d.path, "/hls/" + raw_rest, request, head)
        return ctx.guard.finish(d, served)

    @app.api_route("/hls/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def hls(path: str, request: Request) -> Response:
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        head = request.method == "HEAD"
        try:
            served = await guarded(path, raw, request, head)
        except files.BadPath as exc:
            return JSONResponse({"detail": str(exc)}, 400, headers=CORS)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ObjectNotFound):
            return JSONResponse({"detail": "not found"}, 404, headers=CORS)
        except Exception as exc:  # noqa: BLE001 - answered: the store is away, not the object
            if isinstance(exc, OSError) and not store_transient(exc):  # e.g. ELOOP from a symlink
                log.warning("refused %s: %s", path, exc)
                return JSONResponse({"detail": "not found"}, 404, headers=CORS)
            # a store that does not answer says nothing about the object: never a 404
            # (a player or an edge would take it for gone); try again shortly
            log.warning("store unavailable for %s: %r", path, exc)
            return JSONResponse({"detail": "the media store is unavailable; try again"}, 503,
                                headers={**CORS, "retry-after": "1", "cache-control": "no-store"})  # fmt: skip
        headers = {**served.headers, **CORS}
        if request.method == "HEAD" or served.status in (304, 416):
            return Response(status_code=served.status, headers=headers)
        return Response(served.body, served.status, headers=headers)

    @app.options("/hls/{path:path}", include_in_schema=False)
    async def hls_preflight(path: str) -> Response:
        return Response(
            status_code=204,
            headers={
                **CORS,
                "access-control-allow-methods": "GET, HEAD, OPTIONS",
                "access-control-allow-headers": "Range, If-None-Match, If-Modified-Since",
                "access-control-max-age": "86400",
            },
        )

    # ------------------------------------------------------------ web pages
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/watch/{name}", include_in_schema=False)
    async def watch(name: str) -> Response:
        try:
            await asyncio.to_thread(ctx.db.get_stream, name)
        except StreamNotFound:
            return HTMLResponse(f"<h1>No stream named {_esc(name)}</h1>", 404)
        return FileResponse(WEB_DIR / "watch.html", headers={"cache-control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        allowed = {"player.js": "text/javascript", "style.css": "text/css", "index.js": "text/javascript",
                   "videos.js": "text/javascript", "chat.js": "text/javascript",
                   "stamp.js": "text/javascript"}  # fmt: skip
        if name in allowed:
            return FileResponse(WEB_DIR / name, media_type=allowed[name],
                                headers={"cache-control": "no-cache"})  # fmt: skip
        if name == "hls.min.js" and vendor is not None:
            return FileResponse(vendor / "hls.js" / "dist" / "hls.min.js",
                                media_type="text/javascript",
                                headers={"cache-control": "public, max-age=3600"})  # fmt: skip
        raise HTTPException(404, "not found")

    return app


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
