"""Mux a ``SourceSegment`` to CMAF: an init segment and a fragmented-MP4 media segment.

Track 1 is video (timescale 90 kHz), track 2 audio (timescale = sample rate).
The tfdt of each track is the segment's source decode time, so segments muxed
or transcoded independently line up on one continuous timeline.
"""

from __future__ import annotations

from tidecast.media import fmp4
from tidecast.media.frames import AudioConfig, VideoConfig
from tidecast.segmenter.core import VIDEO_TIMESCALE, SourceSegment

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


def media_segment(seg: SourceSegment, *, video: bool = True, audio: bool = True) -> bytes:
    """The segment's tracks (both by default; ``video=False`` gives the audio rendition)."""
    fragments = []
    if seg.video and video:
        fragments.append(
            fmp4.Fragment(
                VIDEO_TRACK,
                seg.video[0].dts,
                [fmp4.Sample(s.data, s.duration, s.cts_offset, s.keyframe) for s in seg.video],
            )
        )
    if seg.audio and audio:
        fragments.append(
            fmp4.Fragment(
                AUDIO_TRACK,
                seg.audio[0].dts,
                [fmp4.Sample(s.data, s.duration, 0, True) for s in seg.audio],
            )
        )
    return fmp4.media_segment(seg.sequence + 1, fragments)
