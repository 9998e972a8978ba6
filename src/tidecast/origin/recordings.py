"""HTTP for recordings: the broadcasts/clips/retention API and the /videos pages."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from tidecast import keys
from tidecast.db.recordings import (
    BroadcastInfo,
    BroadcastLive,
    BroadcastNotFound,
    ClipError,
    ClipInfo,
    Retention,
)
from tidecast.db.repo import StreamNotFound
from tidecast.live import LiveStatus, live_broadcast_ids
from tidecast.recorder.download import DownloadError, build_mp4
from tidecast.recorder.service import Recorder


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
    recorder: Recorder, live: LiveStatus, require_admin: Callable[..., None]
) -> APIRouter:
    api = APIRouter(prefix="/api/v1")
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
        responses={200: {"content": {"video/mp4": {}}}, 404: {}, 422: {}},
    )
    async def download(
        broadcast: str,
        rendition: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> FileResponse:
        """One MP4 of a rendition (default: the best), whole or [start, end) seconds, no re-encode."""
        info = await one(broadcast)
        rows = await asyncio.to_thread(rec.segments, broadcast)
        tmp = tempfile.TemporaryDirectory(prefix="tidecast-dl-")
        out = Path(tmp.name) / "out.mp4"
        try:
            name, _ = await build_mp4(
                recorder.store, rows, out, rendition=rendition, start=start, end=end
            )
        except DownloadError as exc:
            tmp.cleanup()
            raise HTTPException(422, str(exc)) from None
        except BaseException:
            tmp.cleanup()
            raise
        filename = f"{info.stream}-{broadcast}-{name}.mp4"
        return FileResponse(
            out, media_type="video/mp4", filename=filename, background=BackgroundTask(tmp.cleanup)
        )

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
