"""Mux a ``SourceSegment`` to CMAF: an init segment and a fragmented-MP4 media segment.

Track 1 is video (timescale 90 kHz), track 2 audio (timescale = sample rate).
The tfdt of each track is the segment's source decode time, so segments muxed
or transcoded independently line up on one continuous timeline.
"""

from __future__ import annotations

from tidecast.media import fmp4
from tidecast.media.frames import AudioConfig, VideoConfig
from tidecast.segmenter.core import (
    VIDEO_TIMESCALE,
    AudioSample,
    SourcePart,
    SourceSegment,
    VideoSample,
)

VIDEO_TRACK = fmp4.VIDEO_TRACK
AUDIO_TRACK = fmp4.AUDIO_TRACK


def tracks_for(video: VideoConfig | None, audio: AudioConfig | None) -> list[fmp4.Track]:
    tracks = []
    if video is not None:
        tracks.append(fmp4.Track(VIDEO_TRACK, video, VIDEO_TIMESCALE))
    if audio is not None:
        tracks.append(fmp4.Track(AUDIO_TRACK, audio, audio.sample_rate))
    return tracks


def init_segment(video: VideoConfig | None, audio: AudioConfig | None) -> bytes:
    return fmp4.init_segment(tracks_for(video, audio))


def _fragments(v: list[VideoSample], a: list[AudioSample]) -> list[fmp4.Fragment]:
    fragments = []
    if v:
        samples = [fmp4.Sample(s.data, s.duration, s.cts_offset, s.keyframe) for s in v]
        fragments.append(fmp4.Fragment(VIDEO_TRACK, v[0].dts, samples))
    if a:
        fragments.append(fmp4.Fragment(AUDIO_TRACK, a[0].dts, [fmp4.Sample(s.data, s.duration, 0, True) for s in a]))
    return fragments


def media_segment(seg: SourceSegment, *, video: bool = True, audio: bool = True) -> bytes:
    """The segment's tracks (both by default; ``video=False`` gives the audio rendition)."""
    return fmp4.media_segment(seg.sequence + 1, _fragments(seg.video if video else [], seg.audio if audio else []))


def media_part(part: SourcePart, *, video: bool = True, audio: bool = True) -> bytes:
    """One part of a segment as a CMAF chunk (``moof`` + ``mdat``): the same samples
    the segment holds, so a segment's parts played in order are the segment."""
    frags = _fragments(part.video if video else [], part.audio if audio else [])
    return fmp4.media_segment((part.sequence + 1) * 1000 + part.index, frags, styp=False)
