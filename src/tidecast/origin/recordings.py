"""HTTP for recordings: the broadcasts/clips/retention API and the /videos pages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from tidecast import ffmpeg, keys
from tidecast.db.recordings import (
    BroadcastInfo,
    BroadcastLive,
    BroadcastNotFound,
    ClipError,
    ClipInfo,
    Retention,
)
from tidecast.db.repo import StreamNotFound
from tidecast.limits import Refusal, Slots
from tidecast.live import LiveStatus, live_broadcast_ids
from tidecast.metrics import REGISTRY
from tidecast.recorder.download import DownloadError, Downloads, Prepared
from tidecast.recorder.service import Recorder
from tidecast.store.factory import unwrap
from tidecast.store.local import LocalStore

log = logging.getLogger("tidecast.origin.recordings")
RETRY_AFTER = {Refusal.PER_IP: 5, Refusal.TOTAL: 10}  # seconds, by which cap was hit


class SlotResponse(Response):
    """A response that gives its download slot back when it is over however it ends: sent
    whole, the client gone halfway, or the server shutting down."""

    def __init__(self, inner: Response, release: Callable[[], None]) -> None:
        self.inner, self.release = inner, release
        self.status_code = inner.status_code
        self.background = inner.background
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            self.inner.background = self.background
            await self.inner(scope, receive, send)
        finally:
            self.release()


class SegmentRef(BaseModel):
    rendition: str
    sequence: int


class BroadcastOut(BaseModel):
    id: str
    stream: str
    title: str
    started_at: datetime
    ended_at: datetime | None
    live: bool
    parts: int
    duration: float = Field(description="seconds")
    size: int = Field(description="bytes, every rendition")
    renditions: list[str]
    vod: bool = Field(description="playable as VOD")
    hls_url: str | None
    page_url: str
    poster_url: str | None
    download_url: str
    gaps: int = Field(0, description="segments the recording lists as gaps (could not be made)")
    healed: int = Field(0, description="segments first listed as gaps, made afterwards")
    healed_segments: list[SegmentRef] | None = Field(
        None, description="which segments healed (on GET /broadcasts/{id} only)"
    )


class ClipCreate(BaseModel):
    broadcast: str
    start: float = Field(ge=0, description="seconds from the start of the broadcast")
    end: float = Field(gt=0)
    title: str = ""


class ClipOut(BaseModel):
    id: str
    broadcast: str
    stream: str
    title: str
    duration: float
    created_at: datetime
    hls_url: str
    page_url: str


class RetentionBody(BaseModel):
    recording: bool = True
    mode: str = Field("forever", description="forever | days | count")
    value: int = Field(0, ge=0, description="days to keep, or broadcasts to keep")


def _bout(b: BroadcastInfo, live: bool) -> BroadcastOut:
    base = keys.url_path(keys.broadcast_prefix(b.stream, b.id))
    return BroadcastOut(
        id=b.id, stream=b.stream, title=b.title, started_at=b.started_at, ended_at=b.ended_at,
        live=live, parts=b.parts, duration=b.duration, size=b.size, renditions=list(b.renditions),
        vod=b.vod_ready, hls_url=f"{base}/master.m3u8" if b.vod_ready else None,
        page_url=f"/videos/{b.id}", poster_url=f"{base}/poster.jpg" if b.vod_ready else None,
        download_url=f"/api/v1/broadcasts/{b.id}/download", gaps=b.gaps, healed=b.healed,
        healed_segments=None,
    )  # fmt: skip


def _cout(c: ClipInfo) -> ClipOut:
    base = keys.url_path(keys.clip_prefix(c.stream, c.broadcast, c.id))
    return ClipOut(id=c.id, broadcast=c.broadcast, stream=c.stream, title=c.title,
                   duration=c.duration, created_at=c.created_at,
                   hls_url=f"{base}/master.m3u8", page_url=f"/videos/{c.id}")  # fmt: skip


def recordings_router(
    recorder: Recorder, live: LiveStatus, require_admin: Callable[..., None], downloads: Downloads,
    slots: Slots, client_ip: Callable[[Request], str],
) -> APIRouter:  # fmt: skip
    api = APIRouter(prefix="/api/v1")
    refused = REGISTRY.counter("tidecast_downloads_refused_total",
                               "MP4 download requests refused (429): over the per-address or the node's cap.",
                               ("reason",))  # fmt: skip
    rec = recorder.recordings
    admin = [Depends(require_admin)]

    def live_ids() -> set[str]:
        return live_broadcast_ids(live)

    async def one(broadcast: str) -> BroadcastInfo:
        try:
            return await asyncio.to_thread(rec.get, broadcast)
        except BroadcastNotFound:
            raise HTTPException(404, f"no broadcast {broadcast!r}") from None

    @api.get("/broadcasts", response_model=list[BroadcastOut])
    async def list_broadcasts(stream: str | None = None, vod: bool = False) -> list[BroadcastOut]:
        rows = await asyncio.to_thread(rec.broadcasts, stream, vod)
        live = live_ids()
        return [_bout(b, b.id in live) for b in rows]

    @api.get("/broadcasts/{broadcast}", response_model=BroadcastOut, responses={404: {}})
    async def get_broadcast(broadcast: str) -> BroadcastOut:
        out = _bout(await one(broadcast), broadcast in live_ids())
        healed = await asyncio.to_thread(rec.healed_segments, broadcast)
        out.healed_segments = [SegmentRef(rendition=r, sequence=n) for r, n in healed]
        return out

    @api.delete(
        "/broadcasts/{broadcast}", status_code=204, dependencies=admin, responses={404: {}, 409: {}}
    )
    async def delete_broadcast(broadcast: str) -> Response:
        await one(broadcast)
        try:  # the database refuses an open broadcast, whatever this node believes
            await recorder.delete(broadcast)
        except BroadcastLive:
            raise HTTPException(409, "the broadcast is live; stop it first") from None
        return Response(status_code=204)

    @api.get(
        "/broadcasts/{broadcast}/download",
        responses={200: {"content": {"video/mp4": {}}}, 404: {}, 422: {}, 429: {}, 503: {}},
    )
    async def download(
        broadcast: str,
        request: Request,
        rendition: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> Response:
        """One MP4 of a rendition (default: the best), whole or [start, end) seconds, no re-encode.
        Made once, then served from the store; limited per client address and per node (429)."""
        ip = client_ip(request)
        why = slots.take(ip)
        if why is not None:
            refused.inc(reason=why.value)
            detail = ("too many downloads from your address at once" if why is Refusal.PER_IP
                      else "too many downloads in progress; try again shortly")  # fmt: skip
            return JSONResponse({"detail": detail}, 429, headers={"retry-after": str(RETRY_AFTER[why])})
        prepared: Prepared | None = None
        try:
            info = await one(broadcast)
            rows = await asyncio.to_thread(rec.segments, broadcast)
            ended = info.ended_at is not None and broadcast not in live_ids()
            try:
                prepared = await downloads.prepare(info, rows, ended=ended, rendition=rendition,
                                                   start=start, end=end)  # fmt: skip
            except DownloadError as exc:
                raise HTTPException(422, str(exc)) from None
            except ffmpeg.FFmpegError as exc:
                log.error("download of %s could not be made: %s", broadcast, exc)
                return _release_after(JSONResponse({"detail": "the download could not be made; try again later"},
                                                   503, headers={"retry-after": "30"}), ip, None)  # fmt: skip
            filename = f"{info.stream}-{broadcast}-{prepared.rendition}.mp4"
            return _release_after(await _send(prepared, filename), ip, prepared)
        except BaseException:
            slots.release(ip)
            if prepared is not None and prepared.cleanup is not None:
                prepared.cleanup()
            raise

    def _release_after(response: Response, ip: str, prepared: Prepared | None) -> Response:
        def release() -> None:
            slots.release(ip)
            if prepared is not None and prepared.cleanup is not None:
                prepared.cleanup()

        return SlotResponse(response, release)

    async def _send(prepared: Prepared, filename: str) -> Response:
        if prepared.path is not None:
            return FileResponse(prepared.path, media_type="video/mp4", filename=filename)
        assert prepared.key is not None
        local = unwrap(recorder.store)
        if isinstance(local, LocalStore):
            return FileResponse(local.path_for(prepared.key), media_type="video/mp4", filename=filename)
        body = await recorder.store.get(prepared.key)  # a remote store: through memory
        return Response(body, media_type="video/mp4",
                        headers={"content-disposition": f'attachment; filename="{filename}"'})  # fmt: skip

    @api.post(
        "/clips",
        response_model=ClipOut,
        status_code=201,
        dependencies=admin,
        responses={404: {}, 422: {}},
    )
    async def create_clip(body: ClipCreate) -> ClipOut:
        await one(body.broadcast)
        try:
            clip = await asyncio.to_thread(
                rec.create_clip, body.broadcast, body.start, body.end, body.title
            )
        except ClipError as exc:
            raise HTTPException(422, str(exc)) from None
        await recorder.write_clip(clip)
        return _cout(clip)

    @api.get("/clips", response_model=list[ClipOut])
    async def list_clips(broadcast: str | None = None) -> list[ClipOut]:
        return [_cout(c) for c in await asyncio.to_thread(rec.clips, broadcast)]

    @api.get("/clips/{clip}", response_model=ClipOut, responses={404: {}})
    async def get_clip(clip: str) -> ClipOut:
        try:
            return _cout(await asyncio.to_thread(rec.get_clip, clip))
        except BroadcastNotFound:
            raise HTTPException(404, f"no clip {clip!r}") from None

    @api.get("/streams/{name}/retention", response_model=RetentionBody, responses={404: {}})
    async def get_retention(name: str) -> RetentionBody:
        try:
            r = await asyncio.to_thread(rec.retention, name)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        return RetentionBody(recording=r.recording, mode=r.mode, value=r.value)

    @api.put(
        "/streams/{name}/retention",
        response_model=RetentionBody,
        dependencies=admin,
        responses={404: {}, 422: {}},
    )
    async def set_retention(name: str, body: RetentionBody) -> RetentionBody:
        try:
            await asyncio.to_thread(
                rec.set_retention, name, Retention(body.recording, body.mode, body.value)
            )
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return body

    @api.post("/retention/run", dependencies=admin)
    async def run_retention() -> dict[str, list[str]]:
        """Apply every stream's retention policy now (it also runs every 10 minutes)."""
        return {"deleted": await recorder.apply_retention(live_ids())}

    return api


def video_pages(recorder: Recorder, web_dir: Path) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/videos")
    async def videos() -> FileResponse:
        return FileResponse(web_dir / "videos.html", headers={"cache-control": "no-cache"})

    @pages.get("/videos/{vid}")
    async def video(vid: str) -> Response:
        rec = recorder.recordings
        try:
            await asyncio.to_thread(rec.get, vid)
        except BroadcastNotFound:
            try:
                await asyncio.to_thread(rec.get_clip, vid)
            except BroadcastNotFound:
                return Response("<h1>No such video</h1>", 404, media_type="text/html")
        return FileResponse(web_dir / "watch.html", headers={"cache-control": "no-cache"})

    return pages
