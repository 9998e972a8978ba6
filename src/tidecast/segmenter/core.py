"""Sans-I/O segment cutting: frames in, ``SourceSegment`` records out.

Rules:
- Video drives the cuts: a segment ends at the first video keyframe whose
  decode time is at least ``0.9 * target`` after the segment's first frame, so
  a longer source GOP gives longer segments and renditions can switch at every
  boundary. Video before the first keyframe is dropped.
- Audio is never cut mid-run: each segment takes the audio frames that arrived
  since the previous cut, so the audio track is continuous across segments.
  The cut for audio is the keyframe's presentation time (not its decode time):
  a segment that ends waits ("closing") until audio reaches that instant, so
  with B-frames every segment's audio still starts with its first picture.
  Audio decode times are counted in samples (sample-exact continuity) and
  re-synchronised to the publisher's clock only when it drifts by more than
  two frames (a real gap in the source).
- Without video (audio-only publish), audio drives the cuts by duration.
- A changed decoder configuration (resolution, codec) ends the segment and the
  next one starts with the new configuration (a new init segment downstream).

Limits (every publisher is held to them; a frame that breaks one raises
:class:`SegmentLimitError`, whose ``description`` says what was wrong and what to
change, and the segmenter refuses every later frame):
- A segment lasts at most ``max_duration`` seconds of media time: a publisher that
  sends one keyframe and then only inter frames (or a keyframe interval far
  longer than the target) is cut there. Default ``max(10 * target, 20 s)``: x264's
  and OBS's automatic keyframe interval (250 frames, 10.4 s at 24 fps) stays
  under it down to 12.5 fps, a long target keeps room for ten of its own GOPs,
  and the playlists' target duration (which only grows) stays within what a
  player tolerates.
- A segment holds at most ``max_bytes`` of media (default 64 MiB: a 2 s segment
  at 250 Mbps, or 20 s at 26 Mbps), so frames with frozen timestamps or huge
  frames cannot grow it either.
- Before the stream starts (no decoder configuration, no keyframe yet, or no
  picture after metadata announced video) frames are dropped; once the dropped
  frames span ``max_duration`` the publisher is refused instead of being
  ignored for ever.
The segment that broke a limit is discarded (its frames are counted in
``dropped_frames``): it would raise every viewer's target duration for good.
Segments cut before it, including one still waiting for its audio, are kept
and come out of :meth:`Segmenter.flush`.

Parts (LL-HLS, with ``part_target``): the segmenter also says when a segment starts
(its first keyframe is in: ``SegmentStarted``, so its transcode can begin) and cuts
each segment into parts as they complete (``SourcePart``), by the boundary rule of
``media.parts`` on presentation times from the segment's first frame. A part is cut
once video has moved past it and audio has too (or video is a whole part further:
audio stalled); a frame that comes late for a part already cut goes into the next
one, so the part index never goes back (with B-frames this keeps every part one run
of frames in decode order). The parts of a segment hold exactly its samples: the
last part is cut with the segment, from the segment's own samples. Events come out
of :meth:`Segmenter.take_events` in order: ``SegmentStarted``, the segment's parts,
the segment itself (a ``SourceSegment``, the last part just before it), or
``SegmentAborted`` for a segment that broke a limit after it started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from tidecast.media.frames import AudioConfig, MediaFrame, TrackKind, VideoConfig
from tidecast.media.parts import part_of

VIDEO_TIMESCALE = 90_000
MS = VIDEO_TIMESCALE // 1000
# Every media timeline starts this far after the publisher's clock, leaving room
# for the reordering delay of re-encoded renditions (B-frames: their first
# decode time is earlier than their first presentation time) without ever
# needing a negative decode time. Video and audio move together.
TIMELINE_OFFSET_S = 10
_VIDEO_OFFSET = TIMELINE_OFFSET_S * VIDEO_TIMESCALE

MAX_SEGMENT_BYTES = 64 * 1024 * 1024
MIN_MAX_DURATION = 20.0  # seconds: the floor of the default maximum segment duration


def default_max_duration(target: float) -> float:
    """The default longest segment for a segment ``target`` (see the module docstring)."""
    return max(10 * target, MIN_MAX_DURATION)


class SegmentLimitError(Exception):
    """A publisher broke a segment limit; ``description`` is for the publisher to read.

    ``limit`` names the rule: ``duration``, ``size`` or ``no_keyframe``.
    """

    def __init__(self, limit: str, description: str) -> None:
        super().__init__(description)
        self.limit = limit
        self.description = description


@dataclass(frozen=True, slots=True)
class VideoSample:
    data: bytes
    dts: int  # VIDEO_TIMESCALE ticks
    duration: int
    cts_offset: int
    keyframe: bool


@dataclass(frozen=True, slots=True)
class AudioSample:
    data: bytes
    dts: int  # samples (timescale = sample rate)
    duration: int


@dataclass(slots=True)
class SourceSegment:
    sequence: int
    video_config: VideoConfig | None
    audio_config: AudioConfig | None
    video: list[VideoSample] = field(default_factory=list)
    audio: list[AudioSample] = field(default_factory=list)
    first_frame_arrival: float = 0.0
    completed_at: float = 0.0
    config_generation: int = 0  # bumps whenever the decoder configuration changes

    @property
    def start(self) -> float:
        """Media time (seconds) of the first frame: video if any, else audio."""
        if self.video:
            return self.video[0].dts / VIDEO_TIMESCALE
        if self.audio and self.audio_config:
            return self.audio[0].dts / self.audio_config.sample_rate
        return 0.0

    @property
    def duration(self) -> float:
        if self.video:
            return sum(s.duration for s in self.video) / VIDEO_TIMESCALE
        if self.audio and self.audio_config:
            return sum(s.duration for s in self.audio) / self.audio_config.sample_rate
        return 0.0

    @property
    def frame_rate(self) -> float:
        d = self.duration
        return len(self.video) / d if self.video and d > 0 else 0.0


@dataclass(frozen=True, slots=True)
class SegmentStarted:
    """A segment's first frame (a keyframe) is in: its transcode job can start."""

    sequence: int
    start: float  # seconds: decode time of the first frame (``SourceSegment.start``)
    start_pts: int  # VIDEO_TIMESCALE ticks: presentation time of the first frame
    video_config: VideoConfig
    audio_config: AudioConfig | None
    config_generation: int
    first_frame_arrival: float


@dataclass(frozen=True, slots=True)
class SourcePart:
    """One part of a segment: its video and audio samples (audio may be empty)."""

    sequence: int
    index: int
    video: list[VideoSample]
    audio: list[AudioSample]
    final: bool
    start_pts: int  # the segment's first presentation time (ticks), the parts' origin
    video_config: VideoConfig
    audio_config: AudioConfig | None
    config_generation: int

    @property
    def start(self) -> float:
        """Presentation time (seconds) of the part's first picture."""
        v = self.video[0]
        return (v.dts + v.cts_offset) / VIDEO_TIMESCALE

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.video) / VIDEO_TIMESCALE


@dataclass(frozen=True, slots=True)
class SegmentAborted:
    """A started segment broke a limit and is discarded: it will never be stored."""

    sequence: int


SegmentEvent = SegmentStarted | SourcePart | SourceSegment | SegmentAborted


class Segmenter:
    """Feed it configs and frames; it returns completed segments as they are cut.

    With ``part_target`` (seconds, > 0) it also cuts parts; see ``take_events``.
    """

    def __init__(
        self, target: float = 2.0, clock: Callable[[], float] = time.time, first_sequence: int = 0,
        max_duration: float | None = None, max_bytes: int = MAX_SEGMENT_BYTES,
        part_target: float = 0.0,
    ) -> None:  # fmt: skip
        if part_target < 0 or (part_target and part_target > target / 2):
            raise ValueError(f"bad part target {part_target} s for a {target} s segment target")
        self.part_target = part_target
        self._events: list[SegmentEvent] = []
        # the open part of the current segment: its index, where its video and audio
        # start in the segment's lists, where its video ended (once video moved on)
        self._part = 0
        self._part_vfrom = 0
        self._part_afrom = 0
        self._part_vend: int | None = None
        self._start_pts = 0  # ticks: presentation time of the current segment's first frame
        self._final_from: dict[int, tuple[int, int, int, int]] = {}  # cut, waiting for audio
        self.target_ticks = round(target * 0.9 * VIDEO_TIMESCALE)
        self.target = target
        self.max_duration = default_max_duration(target) if max_duration is None else max_duration
        if not self.max_duration >= target or max_bytes <= 0:
            raise ValueError(f"bad segment limits: {self.max_duration} s (target {target} s), "
                             f"{max_bytes} bytes")  # fmt: skip
        self.max_bytes = max_bytes
        self._max_ms = round(self.max_duration * 1000)
        self.error: SegmentLimitError | None = None  # set once a limit was broken
        self._bytes = 0  # media bytes in the current segment
        self._first_ms = 0  # publisher clock (ms) of the current segment's first frame
        self._closing_bytes = 0  # media bytes of the closing segment (it still takes audio)
        self._waiting_since: int | None = None  # ms: first frame dropped before the start
        self._kept: list[SourceSegment] = []  # completed by a frame that broke a limit
        self.clock = clock
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.config_generation = 0
        self.expect_video = False
        self._seq = first_sequence  # a resumed broadcast continues its numbering
        self._first_sequence = first_sequence
        self._video: list[MediaFrame] = []  # current segment's video, not yet timed
        self._audio: list[AudioSample] = []
        self._first_arrival = 0.0
        self._next_audio_dts: int | None = None
        self._last_video_duration = 3000  # 1/30 s until we know better
        self._seen_keyframe = False
        self._closing: SourceSegment | None = None  # cut, waiting for audio up to its end
        self._closing_until = 0  # ms: presentation time of the keyframe that ended it
        self.dropped_frames = 0

    # -- configuration -------------------------------------------------------
    def set_video_config(self, cfg: VideoConfig) -> list[SourceSegment]:
        self.expect_video = True
        if cfg == self.video_config:
            return []
        out = self._reconfigure()
        if self.video_config is not None:
            self._seen_keyframe = False
        self.video_config = cfg
        return out

    def set_audio_config(self, cfg: AudioConfig) -> list[SourceSegment]:
        if cfg == self.audio_config:
            return []
        out = self._reconfigure()
        self._next_audio_dts = None
        self.audio_config = cfg
        return out

    def _reconfigure(self) -> list[SourceSegment]:
        """A decoder configuration changes: segments cut so far keep the old one."""
        started = self._seq > self._first_sequence or self._video or self._audio
        if not started:
            return []
        out = self._flush_current()
        self.config_generation += 1
        return out

    # -- frames --------------------------------------------------------------
    def push(self, frame: MediaFrame) -> list[SourceSegment]:
        """Take one frame; returns the segments it completes.

        Raises :class:`SegmentLimitError` when the frame breaks a limit, and again for
        every frame after it; segments completed before it come out of ``flush``.
        """
        if self.error is not None:
            raise self.error
        if frame.kind is TrackKind.VIDEO:
            return self._push_video(frame)
        return self._push_audio(frame)

    def _push_video(self, frame: MediaFrame) -> list[SourceSegment]:
        if self.video_config is None:
            return self._drop_before_start(frame, "no video configuration (AVC sequence header)")
        out: list[SourceSegment] = []
        if not self._seen_keyframe:
            if not frame.keyframe:
                return self._drop_before_start(frame, "no keyframe")
            self._seen_keyframe = True
            self._waiting_since = None
        elif frame.keyframe and self._video:
            elapsed = (frame.dts - self._video[0].dts) * MS
            if elapsed >= self.target_ticks:
                out += self._release_closing()
                size = self._bytes
                seg = self._cut(next_video_dts=frame.dts * MS)
                if self.audio_config is None:
                    out.append(self._done(seg))
                else:
                    self._closing, self._closing_until = seg, frame.pts
                    self._closing_bytes = size
        if self._closing is not None and frame.dts >= self._closing_until + 1000:
            out += self._release_closing()  # audio stalled: don't hold the segment back
        self._check_current(frame, out)
        if not self._video and not self._audio:
            self._start_current(frame)
        starts = not self._video
        self._video.append(frame)
        self._bytes += len(frame.data)
        if self.part_target:
            if starts:
                self._segment_started(frame)
            else:
                self._video_part_progress(frame)
        return out

    def _push_audio(self, frame: MediaFrame) -> list[SourceSegment]:
        cfg = self.audio_config
        if cfg is None:
            self.dropped_frames += 1  # audio is optional: video alone is a stream
            return []
        if self.expect_video and not self._seen_keyframe:
            # wait for the first picture so A/V start together (not for ever)
            missing = "no keyframe" if self.video_config is not None else "no video"
            return self._drop_before_start(frame, missing)
        spf = cfg.samples_per_frame
        from_clock = frame.dts * cfg.sample_rate // 1000 + TIMELINE_OFFSET_S * cfg.sample_rate
        if self._next_audio_dts is None or abs(from_clock - self._next_audio_dts) > 2 * spf:
            dts = from_clock
        else:
            dts = self._next_audio_dts
        self._next_audio_dts = dts + spf
        out: list[SourceSegment] = []
        if self._closing is not None:
            if frame.dts < self._closing_until:
                if self._closing_bytes + len(frame.data) > self.max_bytes:
                    self._fail("size", self._size_problem(self._closing_bytes + len(frame.data)), [])
                self._closing.audio.append(AudioSample(frame.data, dts, spf))
                self._closing_bytes += len(frame.data)
                return out
            out += self._release_closing()
        elapsed = dts - self._audio[0].dts if self._audio else 0
        if not self.expect_video and elapsed >= self.target * cfg.sample_rate:
            out.append(self._done(self._cut(next_video_dts=None)))
        self._check_current(frame, out)
        if not self._video and not self._audio:
            self._start_current(frame)
        self._audio.append(AudioSample(frame.data, dts, spf))
        self._bytes += len(frame.data)
        if self.part_target and self._video:
            self._audio_part_progress(cfg)
        return out

    @property
    def cut_count(self) -> int:
        """Segments cut so far (the next sequence number)."""
        return self._seq

    def flush(self) -> list[SourceSegment]:
        """End of stream: whatever is pending becomes the last segment (after a broken
        limit: the segments completed before it, the broken one is discarded)."""
        out, self._kept = self._kept, []
        return out + self._flush_current()

    # -- limits --------------------------------------------------------------
    def _start_current(self, frame: MediaFrame) -> None:
        self._first_arrival = frame.arrival or self.clock()
        self._first_ms = frame.dts

    def _check_current(self, frame: MediaFrame, out: list[SourceSegment]) -> None:
        """Refuse ``frame`` if it takes the current segment past a limit; ``out`` (what it
        completed) is kept for ``flush``."""
        size = self._bytes + len(frame.data)
        if size > self.max_bytes:
            self._fail("size", self._size_problem(size), out)
        started = self._video or self._audio
        if started and frame.dts - self._first_ms > self._max_ms:
            self._fail("duration", f"no keyframe for {self.max_duration:.1f} s (a segment may "
                       f"last at most {self.max_duration:g} s): {self._advice()}", out)  # fmt: skip

    def _size_problem(self, size: int) -> str:
        return (f"a segment grew past {self.max_bytes / 2**20:g} MiB ({size} bytes): "
                f"lower the bitrate or {self._advice()}")  # fmt: skip

    def _drop_before_start(self, frame: MediaFrame, missing: str) -> list[SourceSegment]:
        """A frame that comes before the stream can start: dropped, refused once that lasts."""
        self.dropped_frames += 1
        if self._waiting_since is None:
            self._waiting_since = frame.dts
        elif frame.dts - self._waiting_since >= self._max_ms:
            self._fail("no_keyframe", f"{missing} in the first {self.max_duration:.1f} s: "
                       f"{self._advice()}", [])  # fmt: skip
        return []

    def _advice(self) -> str:
        return f"set the encoder's keyframe interval to {self.target:g} s"

    def _fail(self, limit: str, description: str, completed: list[SourceSegment]) -> NoReturn:
        """Break off: the current segment is discarded; what was completed is kept."""
        self.dropped_frames += len(self._video) + len(self._audio) + 1
        if self.part_target and self._video:
            self._events.append(SegmentAborted(self._seq))
        self._video, self._audio, self._bytes = [], [], 0
        self._kept += completed
        self.error = SegmentLimitError(limit, description)
        raise self.error

    # -- cutting -------------------------------------------------------------
    def _release_closing(self) -> list[SourceSegment]:
        seg, self._closing = self._closing, None
        if seg is None:
            return []
        seg.completed_at = self.clock()
        return [self._done(seg)]

    def _flush_current(self) -> list[SourceSegment]:
        out = self._release_closing()
        if self._video or self._audio:
            out.append(self._done(self._cut(next_video_dts=None)))
        return out

    # -- parts -----------------------------------------------------------------
    def take_events(self) -> list[SegmentEvent]:
        """What happened since the last call, in order (with ``part_target`` only)."""
        out, self._events = self._events, []
        return out

    def _ticks(self, frame: MediaFrame) -> int:
        return frame.pts * MS + _VIDEO_OFFSET

    def _segment_started(self, frame: MediaFrame) -> None:
        assert self.video_config is not None
        self._part, self._part_vfrom, self._part_afrom, self._part_vend = 0, 0, 0, None
        self._start_pts = self._ticks(frame)
        self._events.append(SegmentStarted(
            self._seq, (frame.dts * MS + _VIDEO_OFFSET) / VIDEO_TIMESCALE, self._start_pts,
            self.video_config, self.audio_config, self.config_generation, self._first_arrival,
        ))  # fmt: skip

    def _video_part_progress(self, frame: MediaFrame) -> None:
        """``frame`` (just appended) may move video past the open part."""
        index = part_of(self._ticks(frame), self._start_pts, self.part_target)
        if index <= self._part:
            return
        if self._part_vend is None:
            self._part_vend = len(self._video) - 1
            cfg = self.audio_config
            if cfg is None:
                self._emit_part(len(self._audio))
            elif self._audio and self._audio_part(self._audio[-1], cfg) > self._part:
                self._emit_part(self._audio_end())
        elif index > self._part + 1:  # audio stalled a whole part: don't hold video back
            self._emit_part(self._audio_end())

    def _audio_end(self) -> int:
        """Where the open part's audio ends: at the first audio frame past it (if any)."""
        cfg = self.audio_config
        if cfg is None:
            return len(self._audio)
        for i in range(self._part_afrom, len(self._audio)):
            if self._audio_part(self._audio[i], cfg) > self._part:
                return i
        return len(self._audio)

    def _audio_part(self, sample: AudioSample, cfg: AudioConfig) -> int:
        ticks = sample.dts * VIDEO_TIMESCALE // cfg.sample_rate
        return part_of(ticks, self._start_pts, self.part_target)

    def _audio_part_progress(self, cfg: AudioConfig) -> None:
        """An audio frame was appended: it may complete the open part."""
        if self._part_vend is not None and self._audio_part(self._audio[-1], cfg) > self._part:
            self._emit_part(len(self._audio) - 1)

    def _emit_part(self, audio_end: int) -> None:
        """Cut the open part: video up to where it ended, audio up to ``audio_end``."""
        assert self._part_vend is not None and self.video_config is not None
        frames = self._video[self._part_vfrom : self._part_vend]
        nxt = self._video[self._part_vend]  # video moved past the part: a next frame exists
        video = []
        for i, f in enumerate(frames):
            dts = f.dts * MS + _VIDEO_OFFSET
            after = frames[i + 1] if i + 1 < len(frames) else nxt
            duration = max(1, after.dts * MS + _VIDEO_OFFSET - dts)
            video.append(VideoSample(f.data, dts, duration, (f.pts - f.dts) * MS, f.keyframe))
        audio = self._audio[self._part_afrom : audio_end]
        self._events.append(SourcePart(self._seq, self._part, video, list(audio), False,
                                       self._start_pts, self.video_config, self.audio_config,
                                       self.config_generation))  # fmt: skip
        self._part += 1
        self._part_vfrom, self._part_afrom, self._part_vend = self._part_vend, audio_end, None
        # video may already be past the next part too
        last = self._video[-1] if len(self._video) > self._part_vfrom else None
        if last is not None and part_of(self._ticks(last), self._start_pts, self.part_target) > self._part:
            self._part_vend = next(
                i for i in range(self._part_vfrom, len(self._video))
                if part_of(self._ticks(self._video[i]), self._start_pts, self.part_target) > self._part
            )  # fmt: skip

    def _done(self, seg: SourceSegment) -> SourceSegment:
        """``seg`` is complete: its last part, then the segment itself, are events."""
        if not self.part_target:
            return seg
        start = self._final_from.pop(seg.sequence, None)
        if start is not None and seg.video and seg.video_config is not None:
            index, vfrom, afrom, start_pts = start
            self._events.append(SourcePart(seg.sequence, index, seg.video[vfrom:], seg.audio[afrom:],
                                           True, start_pts, seg.video_config, seg.audio_config,
                                           seg.config_generation))  # fmt: skip
        self._events.append(seg)
        return seg

    def _cut(self, next_video_dts: int | None) -> SourceSegment:
        video: list[VideoSample] = []
        frames = self._video
        for i, f in enumerate(frames):
            dts = f.dts * MS + _VIDEO_OFFSET
            if i + 1 < len(frames):
                nxt = frames[i + 1].dts * MS + _VIDEO_OFFSET
            elif next_video_dts is not None:
                nxt = next_video_dts + _VIDEO_OFFSET
            else:
                nxt = dts + self._last_video_duration
            duration = max(1, nxt - dts)
            video.append(VideoSample(f.data, dts, duration, (f.pts - f.dts) * MS, f.keyframe))
        if len(video) >= 2:
            self._last_video_duration = video[-2].duration
        if self.part_target and video:
            vend = self._part_vend
            if vend is not None:  # video had moved on, audio not yet: cut that part now
                self._emit_part(self._audio_end())
            self._final_from[self._seq] = (self._part, self._part_vfrom, self._part_afrom, self._start_pts)
        seg = SourceSegment(
            sequence=self._seq,
            video_config=self.video_config,  # configs in force (the init segment's tracks)
            audio_config=self.audio_config,
            video=video,
            audio=self._audio,
            first_frame_arrival=self._first_arrival,
            completed_at=self.clock(),
            config_generation=self.config_generation,
        )
        self._seq += 1
        self._video = []
        self._audio = []
        self._bytes = 0
        return seg
