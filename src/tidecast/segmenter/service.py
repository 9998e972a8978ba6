"""SegmenterService: one ``BroadcastSegmenter`` per live broadcast.

Ingest calls the synchronous sink methods from its read loop; cut segments
queue up for one writer task per broadcast, which muxes them to CMAF, stores
init and media objects, and only then publishes ``SegmentReady`` on the bus —
a message never points at an object that is not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from tidecast.bus.base import Bus, Subscription
from tidecast.media.frames import AudioConfig, MediaFrame, VideoConfig
from tidecast.messages import (
    BroadcastEnded,
    BroadcastStarted,
    SegmentReady,
    TranscodeJob,
    TranscodeLag,
)
from tidecast.segmenter import cmaf
from tidecast.segmenter.backpressure import Backpressure, Decision
from tidecast.segmenter.core import Segmenter, SourceSegment
from tidecast.store.base import Store
from tidecast.transcode.ladder import Rung, rungs_for_source

log = logging.getLogger("tidecast.segmenter")

SOURCE = "source"
AUDIO = "audio"  # the shared audio rendition next to a transcoded (video-only) ladder
_END = None


def broadcast_prefix(stream: str, broadcast: str) -> str:
    return f"hls/{stream}/{broadcast}"


def init_key(stream: str, broadcast: str, rendition: str, generation: int, part: int = 0) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/{rendition}/init-p{part}g{generation}.mp4"


def segment_key(stream: str, broadcast: str, rendition: str, sequence: int) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/{rendition}/{sequence:06d}.m4s"


@dataclass(slots=True)
class SegmenterStats:
    segments: int = 0
    bytes: int = 0
    store_errors: int = 0


class BroadcastSegmenter:
    """The sink ingest feeds for one broadcast."""

    def __init__(
        self, service: SegmenterService, stream: str, broadcast: str, started_at: float,
        first_sequence: int = 0, part: int = 0,
    ) -> None:  # fmt: skip
        self.service = service
        self.stream = stream
        self.broadcast = broadcast
        self.started_at = started_at
        self.part = part
        self.core = Segmenter(service.target, first_sequence=first_sequence)
        self.queue: asyncio.Queue[SourceSegment | None] = asyncio.Queue()
        self.stats = SegmenterStats()
        self._announced = False
        self._stored_inits: set[object] = set()
        self._finished = False
        self.log = logging.LoggerAdapter(log, {"stream": stream})
        # backpressure: the renditions of our jobs coming back tell how far transcoding lags
        self.pressure = Backpressure(service.lag_threshold)
        self._completions: Subscription | None = None
        self._tracker: asyncio.Task[None] | None = None
        if service.ladder:
            self._completions = service.bus.subscribe(f"segment.{stream}")
            self._tracker = asyncio.create_task(
                self._track(self._completions), name=f"transcode-lag-{stream}"
            )
        self.writer = asyncio.create_task(self._write_loop(), name=f"segmenter-{stream}")

    # -- sink API (called by ingest) -----------------------------------------
    def metadata(self, data: dict[str, object]) -> None:
        if data.get("videocodecid") not in (None, 0, 0.0, ""):
            self.core.expect_video = True

    def video_config(self, cfg: VideoConfig) -> None:
        self._enqueue(self.core.set_video_config(cfg))

    def audio_config(self, cfg: AudioConfig) -> None:
        self._enqueue(self.core.set_audio_config(cfg))

    def frame(self, frame: MediaFrame) -> None:
        self._enqueue(self.core.push(frame))

    async def finish(self, reason: str = "unpublished") -> None:
        """Cut the last segment, wait until everything is stored and announced."""
        if self._finished:
            await self.writer
            return
        self._finished = True
        self._enqueue(self.core.flush())
        self.queue.put_nowait(_END)
        await self.writer
        await self.service.bus.publish(
            f"broadcast.{self.stream}",
            BroadcastEnded(
                self.stream, self.broadcast, time.time(), reason, self.core.cut_count, self.part
            ),
        )
        await self._stop_tracking()
        self.service.active.pop(self.broadcast, None)
        self.log.info(
            "broadcast %s ended (%s): %d segments, %d bytes",
            self.broadcast,
            reason,
            self.stats.segments,
            self.stats.bytes,
        )

    # -- writer ----------------------------------------------------------------
    def _enqueue(self, segments: list[SourceSegment]) -> None:
        for seg in segments:
            self.queue.put_nowait(seg)

    async def _write_loop(self) -> None:
        if self._completions is not None:
            try:  # see every rendition of the first job come back
                await self.service.bus.ready()
            except Exception:
                self.log.exception("the transcode lag subscription did not start")
        while (seg := await self.queue.get()) is not _END:
            try:
                await self._store(seg)
            except Exception:
                # A segment that cannot be stored is lost; the broadcast goes on.
                self.stats.store_errors += 1
                self.log.exception("could not store segment %d of %s", seg.sequence, self.broadcast)

    async def _store(self, seg: SourceSegment) -> None:
        store, bus = self.service.store, self.service.bus
        if not self._announced:
            self._announced = True
            v, a = seg.video_config, seg.audio_config
            await bus.publish(
                f"broadcast.{self.stream}",
                BroadcastStarted(
                    self.stream, self.broadcast, self.started_at,
                    video_codec=v.codec if v else "", width=v.width if v else 0,
                    height=v.height if v else 0, audio_codec=a.codec if a else "",
                    frame_rate=round(seg.frame_rate, 3), part=self.part,
                ),
            )  # fmt: skip
        gen = seg.config_generation
        ikey = init_key(self.stream, self.broadcast, SOURCE, gen, self.part)
        if gen not in self._stored_inits:
            await store.put(ikey, cmaf.init_segment(seg.video_config, seg.audio_config))
            self._stored_inits.add(gen)
        data = cmaf.media_segment(seg)
        skey = segment_key(self.stream, self.broadcast, SOURCE, seg.sequence)
        await store.put(skey, data)
        stored_at = time.time()
        self.stats.segments += 1
        self.stats.bytes += len(data)
        v, a = seg.video_config, seg.audio_config
        codecs = ",".join(c.codec for c in (v, a) if c is not None)
        await bus.publish(
            f"segment.{self.stream}",
            SegmentReady(
                stream=self.stream, broadcast=self.broadcast, rendition=SOURCE,
                sequence=seg.sequence, start=seg.start, duration=seg.duration,
                init_key=ikey, segment_key=skey, size=len(data),
                has_video=bool(seg.video), has_audio=bool(seg.audio), codecs=codecs,
                width=v.width if v else 0, height=v.height if v else 0,
                frame_rate=round(seg.frame_rate, 3),
                first_frame_arrival=seg.first_frame_arrival, completed_at=seg.completed_at,
                stored_at=stored_at, part=self.part,
            ),
        )  # fmt: skip
        planned = rungs_for_source(self.service.ladder, v.width, v.height) if v else ()
        if self.service.ladder and seg.audio and a is not None:
            await self._store_audio(seg, a, stored_at, tuple(r.name for r in planned) + (AUDIO,))
        if self.service.ladder and seg.video and v is not None:
            top_first = tuple(r.name for r in sorted(planned, key=lambda r: -r.height))
            decision = self.pressure.plan(seg.sequence, top_first, time.monotonic())
            await bus.publish(
                f"job.transcode.{self.stream}",
                TranscodeJob(
                    stream=self.stream, broadcast=self.broadcast, sequence=seg.sequence,
                    start=seg.start, duration=seg.duration, source_init_key=ikey,
                    source_segment_key=skey, width=v.width, height=v.height,
                    frame_rate=round(seg.frame_rate, 3), audio_codec=a.codec if a and seg.audio else "",
                    rungs=tuple(r.to_dict() for r in sorted(planned, key=lambda r: -r.height)),
                    renditions=tuple(r.name for r in planned) + ((AUDIO,) if a and seg.audio else ()),
                    preset=self.service.preset, first_frame_arrival=seg.first_frame_arrival,
                    stored_at=stored_at, part=self.part, skip=decision.skip,
                ),
            )  # fmt: skip
            await self._report_lag(decision)

    # -- backpressure ------------------------------------------------------------
    async def _track(self, sub: Subscription) -> None:
        async for delivery in sub:
            msg = delivery.message
            if isinstance(msg, SegmentReady) and msg.broadcast == self.broadcast:
                self.pressure.done(msg.sequence, msg.rendition)  # a gap counts as done too
            await delivery.ack()

    async def _report_lag(self, d: Decision) -> None:
        if d.degrading:
            self.log.warning(
                "%s: transcoding lags %.1f s behind (threshold %.1f s): new segments skip %s",
                self.stream, d.lag, self.pressure.threshold, ", ".join(d.skip),
            )  # fmt: skip
        elif d.changed:
            self.log.info("%s: transcoding lag down to %.1f s: new segments skip %s",
                          self.stream, d.lag, ", ".join(d.skip) or "nothing (the full ladder)")  # fmt: skip
        await self._publish_lag(d.lag, d.skip, d.changed)

    async def _publish_lag(self, lag: float, skip: tuple[str, ...], changed: bool) -> None:
        msg = TranscodeLag(self.stream, self.broadcast, round(lag, 3), skip, time.time(),
                           self.pressure.degraded_segments, changed, self.part)  # fmt: skip
        try:
            await self.service.bus.publish(f"event.transcode.{self.stream}", msg)
        except Exception as exc:  # noqa: BLE001 - a lost lag report must not lose the segment
            self.log.warning("could not publish the transcode lag: %r", exc)

    async def _stop_tracking(self) -> None:
        """The session is over: report it clear, stop watching renditions."""
        if self._completions is None:
            return
        await self._publish_lag(0.0, (), bool(self.pressure.skipped))
        await self._completions.aclose()
        if self._tracker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._tracker
        self._completions = None

    async def _store_audio(
        self, seg: SourceSegment, a: AudioConfig, source_stored: float, renditions: tuple[str, ...]
    ) -> None:
        """With a ladder, audio is its own rendition: copied from the source, shared by all."""
        store = self.service.store
        ikey = init_key(self.stream, self.broadcast, AUDIO, seg.config_generation, self.part)
        if ("audio", seg.config_generation) not in self._stored_inits:
            await store.put(ikey, cmaf.init_segment(None, a))
            self._stored_inits.add(("audio", seg.config_generation))
        data = cmaf.media_segment(seg, video=False)
        skey = segment_key(self.stream, self.broadcast, AUDIO, seg.sequence)
        await store.put(skey, data)
        audio_start = seg.audio[0].dts / a.sample_rate
        await self.service.bus.publish(
            f"segment.{self.stream}",
            SegmentReady(
                stream=self.stream, broadcast=self.broadcast, rendition=AUDIO,
                sequence=seg.sequence, start=seg.start, duration=seg.duration,
                init_key=ikey, segment_key=skey, size=len(data), has_video=False,
                codecs=a.codec, first_frame_arrival=seg.first_frame_arrival,
                completed_at=seg.completed_at, stored_at=time.time(),
                timings={"audio_start": audio_start, "source_stored": source_stored},
                renditions=renditions,  # the packager waits for all of them before ENDLIST
                part=self.part,
            ),
        )  # fmt: skip


class SegmenterService:
    def __init__(
        self, store: Store, bus: Bus, target: float, ladder: tuple[Rung, ...] = (),
        preset: str = "veryfast", lag_threshold: float = 8.0,
    ) -> None:  # fmt: skip
        self.store = store
        self.bus = bus
        self.target = target
        self.ladder = ladder
        self.preset = preset
        self.lag_threshold = lag_threshold  # seconds of transcode lag before rungs are skipped
        self.active: dict[str, BroadcastSegmenter] = {}

    def open(
        self, stream: str, broadcast: str, started_at: float, first_sequence: int = 0, part: int = 0
    ) -> BroadcastSegmenter:
        seg = BroadcastSegmenter(self, stream, broadcast, started_at, first_sequence, part)
        self.active[broadcast] = seg
        return seg

    async def aclose(self) -> None:
        for seg in list(self.active.values()):
            await seg.finish("server shutdown")
