"""SegmenterService: one ``BroadcastSegmenter`` per live broadcast.

Ingest calls the synchronous sink methods from its read loop; cut segments
queue up for one writer task per broadcast, which muxes them to CMAF, stores
init and media objects, and only then publishes ``SegmentReady`` on the bus —
a message never points at an object that is not stored.

Bounds and what happens at each:
- The queue of cut segments waiting for the writer holds ``queue_segments``
  segments or ``queue_bytes`` of media. Past that, ingest must wait
  (``await sink.room()`` after each read: it stops reading the publisher's
  socket, so TCP pushes back on the encoder); the wait is counted
  (``tidecast_ingest_backpressure_seconds_total{stream}``) and lasts at most
  ``backpressure_deadline``, after which the publisher is refused
  (``StoreStalled``). Only that publisher waits: every broadcast has its own
  queue and writer. One read adds at most what it cuts, so the queue never
  holds more than its bound plus one read's frames and one segment.
- A segment past its maximum duration or size (see ``segmenter.core``) ends the
  publisher: ``frame`` raises ``SegmentLimitError``; ingest tells the publisher
  and disconnects it, and the broadcast is finished normally.
- A source segment that cannot be stored (the store's own retries gave up)
  becomes a gap: ``SegmentReady(gap=True)`` for every rendition of that
  sequence, so the packager lists EXT-X-GAP at once; no transcode job is
  published for it; counted (``tidecast_segmenter_store_failures_total``).
  A message the bus finally refuses is logged and counted
  (``tidecast_segmenter_publish_failures_total``); the broadcast goes on.
- ``finish`` waits for the writer at most ``finish_timeout``; what is still
  queued then is announced as gaps.

The writer and the transcode lag tracker of every broadcast are supervised
tasks (crash logged, counted, restarted).

Low latency (``part_target``): the queue carries the core's events in order. At a
segment's first frame the init segment is stored and the transcode job published
(the worker starts on the segment's first part); each part is stored
(``keys.part`` of the source, and of the shared audio rendition) and announced:
``PartReady`` on ``segment.<stream>`` for the packager, and the same message on
the core subject ``part.<stream>`` to wake the transcoders (which also poll the
store, so a lost wake-up costs little). A segment's last part is stored after the
segment itself: a worker that finds the last part also finds the segment, so it
knows the part is the last one without having to be told. A segment that started
and then broke a limit becomes gaps in every rendition (its job fails on its
deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from tidecast import keys
from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.bus.consumer import consume
from tidecast.media.frames import AudioConfig, MediaFrame, VideoConfig
from tidecast.messages import (
    BroadcastEnded,
    BroadcastStarted,
    Message,
    PartReady,
    SegmentReady,
    TranscodeJob,
    TranscodeLag,
    part_wakeup_subject,
)
from tidecast.metrics import REGISTRY, Registry
from tidecast.segmenter import cmaf
from tidecast.segmenter.backpressure import Backpressure, Decision
from tidecast.segmenter.core import (
    MAX_SEGMENT_BYTES,
    SegmentAborted,
    Segmenter,
    SegmentEvent,
    SegmentLimitError,
    SegmentStarted,
    SourcePart,
    SourceSegment,
)
from tidecast.segmenter.plan import AUDIO, SOURCE, SourcePlan, TranscodePlan, plan_for
from tidecast.store.base import Store
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.segmenter")

QUEUE_SEGMENTS = 8  # 16 s of media at the default target: a store may pause that long
QUEUE_BYTES = 128 * 1024 * 1024
BACKPRESSURE_DEADLINE = 30.0  # seconds a publisher may be held before it is refused
FINISH_TIMEOUT = 60.0


class StoreStalled(SegmentLimitError):
    """The broadcast's segments could not be stored in time: the publisher must stop."""


@dataclass(slots=True)
class SegmenterStats:
    segments: int = 0
    bytes: int = 0
    store_errors: int = 0  # source or audio segments that could not be stored (gaps)
    publish_errors: int = 0  # messages the bus refused
    gaps: int = 0  # gap announcements published
    backpressure_seconds: float = 0.0


def _media_bytes(seg: SegmentEvent) -> int:
    if isinstance(seg, SourceSegment | SourcePart):
        return sum(len(s.data) for s in seg.video) + sum(len(s.data) for s in seg.audio)
    return 0


class BroadcastSegmenter:
    """The sink ingest feeds for one broadcast."""

    def __init__(
        self, service: SegmenterService, stream: str, broadcast: str, started_at: float,
        first_sequence: int = 0, part: int = 0, low_latency: bool = True,
    ) -> None:  # fmt: skip
        self.service = service
        self.stream = stream
        self.broadcast = broadcast
        self.started_at = started_at
        self.part = part
        # LL-HLS parts: the node's part target, unless this stream plays on whole segments
        self.part_target = service.part_target if low_latency else 0.0
        self.core = Segmenter(service.target, first_sequence=first_sequence,
                              max_duration=service.max_segment_duration,
                              max_bytes=service.max_segment_bytes,
                              part_target=self.part_target)  # fmt: skip
        # the bound is kept by ingest awaiting room() (backpressure), see the module docstring
        self.queue: deque[SegmentEvent] = deque()
        self.queued_bytes = 0
        self.queued_segments = 0
        # sequences whose job went out at the first frame -> the renditions it makes
        self._early_jobs: dict[int, tuple[str, ...]] = {}
        self._final_parts: dict[int, SourcePart] = {}  # stored after their segment
        self._wakeup = asyncio.Event()  # the writer has something to do
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._ended = False  # no segment after the queued ones
        self._current: SourceSegment | None = None  # being written
        self.stats = SegmenterStats()
        self._announced = False
        self._frame_rate = 0.0  # of the last segment: the best guess for one being cut
        self._failed_jobs: set[int] = set()  # an early job the bus refused (gaps announced)
        self._stored_inits: set[tuple[str, int]] = set()
        self._plans: dict[tuple[int, int], SourcePlan] = {}
        self._finished = False
        self.log = logging.LoggerAdapter(log, {"stream": stream})
        # backpressure: the renditions of our jobs coming back tell how far transcoding lags
        self.pressure = Backpressure(service.lag_threshold)
        self._completions: Subscription | None = None
        sup, tag = service.supervisor, f"{stream}-{broadcast}-p{part}"
        self._tracker_name = f"segmenter-lag-{tag}"
        if service.plan:
            sub = self._completions = service.bus.subscribe(f"segment.{stream}")
            sup.spawn(self._tracker_name, lambda: self._track(sub), kind="segmenter-lag")
        self._writer_name = f"segmenter-writer-{tag}"
        self.writer = sup.spawn(self._writer_name, self._write_loop, kind="segmenter-writer")

    # -- sink API (called by ingest) -----------------------------------------
    def metadata(self, data: dict[str, object]) -> None:
        if data.get("videocodecid") not in (None, 0, 0.0, ""):
            self.core.expect_video = True

    def video_config(self, cfg: VideoConfig) -> None:
        self._enqueue(self.core.set_video_config(cfg))

    def audio_config(self, cfg: AudioConfig) -> None:
        self._enqueue(self.core.set_audio_config(cfg))

    def frame(self, frame: MediaFrame) -> None:
        """Raises ``SegmentLimitError`` when the publisher broke a segment limit: tell it
        ``exc.description`` and disconnect it (then ``finish`` as usual)."""
        try:
            segments = self.core.push(frame)
        except SegmentLimitError as exc:
            self._refused(exc)
            if self.core.part_target:
                self._enqueue([])  # what it cut before the limit (and the abort)
            raise
        self._enqueue(segments)

    def full(self) -> bool:
        s = self.service
        return self.queued_segments >= s.queue_segments or self.queued_bytes >= s.queue_bytes

    async def room(self) -> None:
        """Return once the queue is below its bound (at once, nearly always).

        Ingest awaits this after handling each read, so a publisher whose segments
        cannot be stored fast enough is not read from meanwhile. Raises
        ``StoreStalled`` after ``backpressure_deadline`` seconds.
        """
        if not self.full():
            return
        s = self.service
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self._has_room.wait(), s.backpressure_deadline)
        except TimeoutError:
            exc = StoreStalled(
                "backpressure",
                f"the server could not store this stream for {s.backpressure_deadline:g} s "
                f"({len(self.queue)} segments waiting): its storage is too slow or down; "
                "publish again later",
            )
            self._refused(exc)
            raise exc from None
        finally:
            waited = time.monotonic() - t0
            self.stats.backpressure_seconds += waited
            s.m_backpressure.inc(waited, stream=self.stream)

    def _refused(self, exc: SegmentLimitError) -> None:
        self.service.m_cut.inc(stream=self.stream, limit=exc.limit)
        self.log.warning("%s: publisher refused (%s): %s", self.stream, exc.limit, exc.description)

    async def finish(self, reason: str = "unpublished") -> None:
        """Cut the last segment, wait until everything is stored and announced."""
        if self._finished:
            await asyncio.wait({self.writer}, timeout=self.service.finish_timeout)
            return
        self._finished = True
        self._enqueue(self.core.flush())
        self._ended = True
        self._wakeup.set()
        await self._wait_writer()
        await self._publish(
            f"broadcast.{self.stream}",
            BroadcastEnded(
                self.stream, self.broadcast, time.time(), reason, self.core.cut_count, self.part
            ),
        )
        await self._stop_tracking()
        if self.service.active.get(self.broadcast) is self:
            del self.service.active[self.broadcast]
        self.log.info(
            "broadcast %s ended (%s): %d segments, %d bytes",
            self.broadcast,
            reason,
            self.stats.segments,
            self.stats.bytes,
        )

    async def _wait_writer(self) -> None:
        timeout = self.service.finish_timeout
        done, _ = await asyncio.wait({self.writer}, timeout=timeout)
        if done:
            return
        # the one being written is still its first
        left = [seg for seg in self.queue if isinstance(seg, SourceSegment)]
        self.log.error("%s: segments still not stored after %g s: %d announced as gaps",
                       self.stream, timeout, len(left))  # fmt: skip
        await self.service.supervisor.stop(self._writer_name)
        self.queue.clear()
        self.queued_bytes = 0
        self.queued_segments = 0
        self._update_room()
        transcoded = bool(self.service.plan)
        for seg in left:
            await self._announce_gaps(seg, self._plan(seg), source=True, audio=transcoded,
                                      rungs=transcoded)  # fmt: skip

    # -- queue -----------------------------------------------------------------
    def _enqueue(self, segments: list[SourceSegment]) -> None:
        """Queue what the core cut (with parts: every event it has, in order)."""
        items: list[SegmentEvent] = list(self.core.take_events()) if self.core.part_target else list(segments)
        for item in items:
            self.queue.append(item)
            self.queued_bytes += _media_bytes(item)
            if isinstance(item, SourceSegment):
                self.queued_segments += 1
        if items:
            self._wakeup.set()
            self._update_room()

    def _update_room(self) -> None:
        if self.full():
            self._has_room.clear()
        else:
            self._has_room.set()
        self.service.m_queued.set(len(self.queue), stream=self.stream)

    # -- writer ----------------------------------------------------------------
    async def _write_loop(self) -> None:
        if self._completions is not None:
            try:  # see every rendition of the first job come back
                await self.service.bus.ready()
            except Exception:
                self.log.exception("the transcode lag subscription did not start")
        while True:
            if not self.queue:
                if self._ended:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self.queue[0]
            try:
                if isinstance(item, SourceSegment):
                    self._current = item
                    await self._write(item)
                elif isinstance(item, SegmentStarted):
                    await self._started(item)
                elif isinstance(item, SourcePart):
                    await self._write_part(item)
                else:
                    await self._aborted(item)
            except Exception:  # a bug, not the store (handled in _write): the stream goes on
                self.stats.store_errors += 1
                self.service.m_store_failures.inc(stream=self.stream)
                if isinstance(item, SourceSegment):
                    self.log.exception("%s: segment %d failed; announced as a gap",
                                       self.stream, item.sequence)  # fmt: skip
                    transcoded = bool(self.service.plan)
                    await self._announce_gaps(item, self._plan(item), source=True, audio=transcoded,
                                              rungs=transcoded)  # fmt: skip
                else:  # a lost part costs latency only: the segment is stored whole too
                    self.log.exception("%s: %s failed", self.stream, type(item).__name__)
            finally:
                self._current = None
                self.queue.popleft()
                self.queued_bytes -= _media_bytes(item)
                if isinstance(item, SourceSegment):
                    self.queued_segments -= 1
                self._update_room()

    def _plan(self, seg: SourceSegment | SegmentStarted | SourcePart) -> SourcePlan:
        """The rungs this source gets (computed once per source size)."""
        v = seg.video_config
        if v is None or (not isinstance(seg, SegmentStarted) and not seg.video):
            return SourcePlan(())
        size = (v.width, v.height)
        if size not in self._plans:
            self._plans[size] = plan_for(self.service.plan, v.width, v.height)
        return self._plans[size]

    # -- parts (low latency) -----------------------------------------------------
    async def _store_init(self, rendition: str, gen: int, video: VideoConfig | None,
                          audio: AudioConfig | None) -> str:  # fmt: skip
        ikey = keys.source_init(self.stream, self.broadcast, rendition, gen, self.part)
        if (rendition, gen) not in self._stored_inits:
            await self.service.store.put(ikey, cmaf.init_segment(video, audio))
            self._stored_inits.add((rendition, gen))
        return ikey

    async def _started(self, ev: SegmentStarted) -> None:
        """A segment's first frame: its init is stored and its transcode job goes out."""
        await self._announce_started(ev)
        plan = self._plan(ev)
        if not (self.service.plan and plan.rungs):
            return
        try:
            ikey = await self._store_init(SOURCE, ev.config_generation, ev.video_config, ev.audio_config)
        except Exception as exc:  # noqa: BLE001 - the job goes out with the segment instead
            self.log.warning("%s: could not store the init segment of %d yet: %r",
                             self.stream, ev.sequence, exc)  # fmt: skip
            return
        v, a = ev.video_config, ev.audio_config
        decision = self.pressure.plan(ev.sequence, plan.names, time.monotonic(), started=False)
        job = TranscodeJob(
            stream=self.stream, broadcast=self.broadcast, sequence=ev.sequence,
            start=ev.start, duration=0.0, source_init_key=ikey,
            source_segment_key=keys.segment(self.stream, self.broadcast, SOURCE, ev.sequence),
            width=v.width, height=v.height, frame_rate=self._frame_rate,
            audio_codec=a.codec if a else "", rungs=plan.job_rungs(),
            renditions=plan.renditions(audio=a is not None), preset=self.service.preset,
            first_frame_arrival=ev.first_frame_arrival, stored_at=time.time(), part=self.part,
            skip=decision.skip, part_target=self.part_target,
        )  # fmt: skip
        self._early_jobs[ev.sequence] = job.renditions
        if not await self._publish(f"job.transcode.{self.stream}", job):
            for name in plan.names:  # nobody will encode it: not a lag, a gap
                self.pressure.done(ev.sequence, name)
            del self._early_jobs[ev.sequence]
            self._failed_jobs.add(ev.sequence)
        await self._report_lag(decision)

    async def _write_part(self, p: SourcePart) -> None:
        """Store one part (source; with a ladder also the audio rendition's) and announce
        it; the last part of a segment waits for its segment."""
        if p.final:
            self._final_parts[p.sequence] = p
            return
        await self._store_part(p)

    async def _store_part(self, p: SourcePart) -> None:
        store = self.service.store
        gen = p.config_generation
        ikey = await self._store_init(SOURCE, gen, p.video_config, p.audio_config)
        key = keys.part(self.stream, self.broadcast, SOURCE, p.sequence, p.index)
        data = cmaf.media_part(p)
        await store.put(key, data)
        msg = PartReady(
            stream=self.stream, broadcast=self.broadcast, rendition=SOURCE, sequence=p.sequence,
            index=p.index, start=p.start, duration=p.duration, key=key, init_key=ikey,
            size=len(data), independent=p.video[0].keyframe, final=p.final,
            produced_at=time.time(), part=self.part, listed=self._plan(p).source,
        )  # fmt: skip
        await self._publish(f"segment.{self.stream}", msg)
        try:  # not durable: a transcoder that misses it finds the part by polling
            await self.service.bus.publish(part_wakeup_subject(self.stream), msg)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("%s: could not publish a part wake-up: %r", self.stream, exc)
        a = p.audio_config
        if self.service.plan and a is not None and p.audio:
            akey = await self._store_init(AUDIO, gen, None, a)
            key = keys.part(self.stream, self.broadcast, AUDIO, p.sequence, p.index)
            data = cmaf.media_part(p, video=False)
            await store.put(key, data)
            await self._publish(f"segment.{self.stream}", PartReady(
                stream=self.stream, broadcast=self.broadcast, rendition=AUDIO, sequence=p.sequence,
                index=p.index, start=p.audio[0].dts / a.sample_rate,
                duration=sum(x.duration for x in p.audio) / a.sample_rate, key=key, init_key=akey,
                size=len(data), independent=True, final=p.final, produced_at=time.time(),
                part=self.part,
            ))  # fmt: skip

    async def _store_final_part(self, seq: int) -> None:
        p = self._final_parts.pop(seq, None)
        if p is None:
            return
        try:
            await self._store_part(p)
        except Exception as exc:  # noqa: BLE001 - the segment is stored: parts only add latency
            self.log.warning("%s: could not store the last part of %d: %r", self.stream, seq, exc)

    async def _aborted(self, ev: SegmentAborted) -> None:
        """A started segment broke a limit: it never comes, in any rendition."""
        self._final_parts.pop(ev.sequence, None)
        renditions = self._early_jobs.pop(ev.sequence, None)
        if renditions is None:
            return
        self.log.warning("%s: segment %d was cut off by a limit after its job went out; "
                         "announced as gaps", self.stream, ev.sequence)  # fmt: skip
        for name in renditions:
            self.pressure.done(ev.sequence, name)
        for name in dict.fromkeys((SOURCE, *renditions)):  # a listed source is among them
            gap = SegmentReady(
                stream=self.stream, broadcast=self.broadcast, rendition=name, sequence=ev.sequence,
                start=0.0, duration=0.0, init_key="",
                segment_key=keys.segment(self.stream, self.broadcast, name, ev.sequence), size=0,
                gap=True, part=self.part,
                renditions=renditions if name != SOURCE or SOURCE in renditions else (SOURCE,),
            )  # fmt: skip
            if await self._publish(f"segment.{self.stream}", gap):
                self.stats.gaps += 1

    async def _write(self, seg: SourceSegment) -> None:
        """Store one source segment and announce it; a store failure becomes gaps."""
        await self._announce_started(seg)
        plan = self._plan(seg)
        transcoded = bool(self.service.plan)
        a = seg.audio_config if seg.audio else None
        try:
            ikey, skey, size = await self._store_source(seg)
        except Exception as exc:  # noqa: BLE001 - retried underneath: this is final
            self._final_parts.pop(seg.sequence, None)
            self._store_failed(seg, SOURCE, exc)
            # an early job is out: it fails on its deadline (its rungs are gaps already)
            if self._early_jobs.pop(seg.sequence, None) is not None:
                self.pressure.complete(seg.sequence, time.monotonic())
            await self._announce_gaps(seg, plan, source=True, audio=transcoded, rungs=transcoded)
            return
        await self._store_final_part(seg.sequence)
        if seg.video:
            self._frame_rate = round(seg.frame_rate, 3)
        stored_at = time.time()
        self.stats.segments += 1
        self.stats.bytes += size
        v = seg.video_config
        codecs = ",".join(c.codec for c in (v, seg.audio_config) if c is not None)
        await self._publish(
            f"segment.{self.stream}",
            SegmentReady(
                stream=self.stream, broadcast=self.broadcast, rendition=SOURCE,
                sequence=seg.sequence, start=seg.start, duration=seg.duration,
                init_key=ikey, segment_key=skey, size=size,
                has_video=bool(seg.video), has_audio=bool(seg.audio), codecs=codecs,
                width=v.width if v else 0, height=v.height if v else 0,
                frame_rate=round(seg.frame_rate, 3),
                first_frame_arrival=seg.first_frame_arrival, completed_at=seg.completed_at,
                stored_at=stored_at, part=self.part,
                renditions=plan.renditions(audio=a is not None) if plan.source else (),
            ),
        )  # fmt: skip
        if transcoded and a is not None:
            await self._store_audio(seg, a, stored_at, plan.renditions(audio=True))
        if self._early_jobs.pop(seg.sequence, None) is not None:
            self.pressure.complete(seg.sequence, time.monotonic())
        elif seg.sequence in self._failed_jobs:
            self._failed_jobs.discard(seg.sequence)
        elif transcoded and v is not None and plan.rungs:
            await self._publish_job(seg, plan, ikey, skey, stored_at)

    async def _store_source(self, seg: SourceSegment) -> tuple[str, str, int]:
        store = self.service.store
        ikey = await self._store_init(SOURCE, seg.config_generation, seg.video_config, seg.audio_config)
        data = cmaf.media_segment(seg)
        skey = keys.segment(self.stream, self.broadcast, SOURCE, seg.sequence)
        await store.put(skey, data)
        return ikey, skey, len(data)

    async def _store_audio(
        self, seg: SourceSegment, a: AudioConfig, source_stored: float, renditions: tuple[str, ...]
    ) -> None:
        """With a ladder, audio is its own rendition: copied from the source, shared by all."""
        store = self.service.store
        gen = seg.config_generation
        ikey = keys.source_init(self.stream, self.broadcast, AUDIO, gen, self.part)
        skey = keys.segment(self.stream, self.broadcast, AUDIO, seg.sequence)
        try:
            await self._store_init(AUDIO, gen, None, a)
            data = cmaf.media_segment(seg, video=False)
            await store.put(skey, data)
        except Exception as exc:  # noqa: BLE001 - retried underneath: this is final
            self._store_failed(seg, AUDIO, exc)
            await self._announce_gaps(seg, self._plan(seg), source=False, audio=True, rungs=False)
            return
        audio_start = seg.audio[0].dts / a.sample_rate
        await self._publish(
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

    async def _publish_job(
        self, seg: SourceSegment, plan: SourcePlan, ikey: str, skey: str, stored_at: float
    ) -> None:
        v, a = seg.video_config, seg.audio_config if seg.audio else None
        assert v is not None
        decision = self.pressure.plan(seg.sequence, plan.names, time.monotonic())
        job = TranscodeJob(
            stream=self.stream, broadcast=self.broadcast, sequence=seg.sequence,
            start=seg.start, duration=seg.duration, source_init_key=ikey,
            source_segment_key=skey, width=v.width, height=v.height,
            frame_rate=round(seg.frame_rate, 3), audio_codec=a.codec if a else "",
            rungs=plan.job_rungs(), renditions=plan.renditions(audio=a is not None),
            preset=self.service.preset, first_frame_arrival=seg.first_frame_arrival,
            stored_at=stored_at, part=self.part, skip=decision.skip,
        )  # fmt: skip
        if not await self._publish(f"job.transcode.{self.stream}", job):
            for name in plan.names:  # nobody will encode it: not a lag, a gap
                self.pressure.done(seg.sequence, name)
            await self._announce_gaps(seg, plan, source=False, audio=False, rungs=True)
        await self._report_lag(decision)

    async def _announce_started(self, seg: SourceSegment | SegmentStarted) -> None:
        if self._announced:
            return
        v, a = seg.video_config, seg.audio_config
        rate = round(seg.frame_rate, 3) if isinstance(seg, SourceSegment) else self._frame_rate
        self._announced = await self._publish(
            f"broadcast.{self.stream}",
            BroadcastStarted(
                self.stream, self.broadcast, self.started_at,
                video_codec=v.codec if v else "", width=v.width if v else 0,
                height=v.height if v else 0, audio_codec=a.codec if a else "",
                frame_rate=rate, part=self.part,
            ),
        )  # fmt: skip

    # -- failures --------------------------------------------------------------
    def _store_failed(self, seg: SourceSegment, rendition: str, exc: Exception) -> None:
        self.stats.store_errors += 1
        self.service.m_store_failures.inc(stream=self.stream)
        self.log.error("%s: could not store segment %d (%s) of %s: %r; announced as a gap",
                       self.stream, seg.sequence, rendition, self.broadcast, exc)  # fmt: skip

    async def _publish(self, subject: str, msg: Message) -> bool:
        """Publish (retried underneath); a final failure is logged and counted."""
        try:
            await self.service.bus.publish(subject, msg)
        except Exception as exc:  # noqa: BLE001 - a lost message must not stop the broadcast
            self.stats.publish_errors += 1
            self.service.m_publish_failures.inc(stream=self.stream)
            self.log.error("%s: could not publish %s on %s: %r", self.stream, msg.kind, subject, exc)
            return False
        return True

    async def _announce_gaps(
        self, seg: SourceSegment, plan: SourcePlan, *, source: bool, audio: bool, rungs: bool
    ) -> None:
        """Renditions of ``seg`` that will never be made: EXT-X-GAP, same sequence number."""
        has_audio = bool(seg.audio) and seg.audio_config is not None
        made = plan.renditions(audio=has_audio)  # what the job and the audio segment carry
        # (rendition, the renditions its normal message names, has video, has audio)
        names: list[tuple[str, tuple[str, ...], bool, bool]] = []
        if source:
            names.append((SOURCE, made if plan.source else (SOURCE,), bool(seg.video), bool(seg.audio)))
        if audio and has_audio:
            names.append((AUDIO, made, False, True))
        if rungs:
            names += [(n, made, True, has_audio) for n in plan.names]
        for name, renditions, video, sound in names:
            gap = SegmentReady(
                stream=self.stream, broadcast=self.broadcast, rendition=name,
                sequence=seg.sequence, start=seg.start, duration=seg.duration, init_key="",
                segment_key=keys.segment(self.stream, self.broadcast, name, seg.sequence),
                size=0, has_video=video, has_audio=sound,
                first_frame_arrival=seg.first_frame_arrival, completed_at=seg.completed_at,
                renditions=renditions, gap=True, part=self.part,
            )  # fmt: skip
            if await self._publish(f"segment.{self.stream}", gap):
                self.stats.gaps += 1

    # -- backpressure ------------------------------------------------------------
    async def _track(self, sub: Subscription) -> None:
        """Renditions coming back (``consume``: a message that cannot be taken is
        dead-lettered and the tracker goes on)."""
        await consume(sub, self._on_rendition, bus=self.service.bus, name="segmenter")

    async def _on_rendition(self, delivery: Delivery) -> None:
        msg = delivery.message
        if isinstance(msg, SegmentReady) and msg.broadcast == self.broadcast:
            self.pressure.done(msg.sequence, msg.rendition)  # a gap counts as done too

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
        await self._completions.aclose()  # the tracker's next() returns None: it ends
        tracker = self.service.supervisor
        if tracker.running(self._tracker_name):
            await tracker.stop(self._tracker_name)
        self._completions = None


class SegmenterService:
    """Segmenters of every live broadcast of this ingest node.

    ``plan`` is what transcoding makes of a source (``transcode.ladder.Ladder``);
    falsy: no transcoding. ``max_segment_duration`` (None: ``max(10 * target, 20)``)
    and ``max_segment_bytes`` are the segment limits; ``queue_segments`` /
    ``queue_bytes`` bound each broadcast's queue, ``backpressure_deadline`` how long
    a publisher may be held by it, ``finish_timeout`` how long a broadcast's end
    waits for its segments to be stored. ``part_target`` > 0 turns on LL-HLS parts.
    """

    def __init__(
        self, store: Store, bus: Bus, target: float, plan: TranscodePlan | None = None,
        preset: str = "veryfast", lag_threshold: float = 8.0, *,
        max_segment_duration: float | None = None, max_segment_bytes: int = MAX_SEGMENT_BYTES,
        queue_segments: int = QUEUE_SEGMENTS, queue_bytes: int = QUEUE_BYTES,
        backpressure_deadline: float = BACKPRESSURE_DEADLINE,
        finish_timeout: float = FINISH_TIMEOUT, registry: Registry = REGISTRY,
        part_target: float = 0.0,
    ) -> None:  # fmt: skip
        if plan and not callable(getattr(plan, "plan", None)):
            raise TypeError(
                f"plan must be a TranscodePlan (e.g. transcode.ladder.Ladder(rungs)), got {plan!r}"
            )
        if queue_segments < 1 or queue_bytes < 1 or backpressure_deadline <= 0 or finish_timeout <= 0:
            raise ValueError("segmenter queue bounds and deadlines must be positive")
        self.store = store
        self.bus = bus
        self.target = target
        self.part_target = part_target  # seconds; 0: no parts (whole segments only)
        self.plan = plan
        self.preset = preset
        self.lag_threshold = lag_threshold  # seconds of transcode lag before rungs are skipped
        self.max_segment_duration = max_segment_duration
        self.max_segment_bytes = max_segment_bytes
        self.queue_segments = queue_segments
        self.queue_bytes = queue_bytes
        self.backpressure_deadline = backpressure_deadline
        self.finish_timeout = finish_timeout
        self.active: dict[str, BroadcastSegmenter] = {}
        self.supervisor = Supervisor("segmenter", registry=registry)
        self.m_backpressure = registry.counter(
            "tidecast_ingest_backpressure_seconds_total",
            "Seconds ingest stopped reading a publisher because its segments were not stored yet.",
            ("stream",),
        )
        self.m_cut = registry.counter(
            "tidecast_ingest_publishers_refused_total",
            "Live publishers disconnected for breaking a segment limit or stalling the store.",
            ("stream", "limit"),
        )
        self.m_store_failures = registry.counter(
            "tidecast_segmenter_store_failures_total",
            "Segments the store finally refused (announced as gaps).", ("stream",),
        )  # fmt: skip
        self.m_publish_failures = registry.counter(
            "tidecast_segmenter_publish_failures_total",
            "Messages the bus finally refused.", ("stream",),
        )  # fmt: skip
        self.m_queued = registry.gauge(
            "tidecast_segmenter_queued_segments",
            "Cut segments waiting to be stored.", ("stream",),
        )  # fmt: skip

    def open(
        self, stream: str, broadcast: str, started_at: float, first_sequence: int = 0, part: int = 0,
        *, low_latency: bool = True,
    ) -> BroadcastSegmenter:  # fmt: skip
        """``low_latency`` False: whole segments only, whatever the node's ``part_target``."""
        seg = BroadcastSegmenter(self, stream, broadcast, started_at, first_sequence, part, low_latency)
        self.active[broadcast] = seg
        return seg

    async def aclose(self) -> None:
        for seg in list(self.active.values()):
            await seg.finish("server shutdown")
        await self.supervisor.aclose()
