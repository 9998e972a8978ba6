"""Decode stored CMAF segments with PyAV (FFmpeg's libraries) and report what is in them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av


@dataclass
class SegmentReport:
    name: str
    video_pts: list[float] = field(default_factory=list)  # seconds, presentation order
    audio: list[tuple[float, float]] = field(default_factory=list)  # (pts, duration) seconds
    first_video_keyframe: bool = False
    width: int = 0
    height: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def video_start(self) -> float:
        return min(self.video_pts)

    @property
    def video_end(self) -> float:  # pts of the last frame shown
        return max(self.video_pts)

    @property
    def audio_start(self) -> float:
        return self.audio[0][0]

    @property
    def audio_end(self) -> float:
        pts, dur = self.audio[-1]
        return pts + dur


def decode_segment(name: str, init: bytes, segment: bytes) -> SegmentReport:
    report = SegmentReport(name)
    with av.logging.Capture() as logs:
        try:
            with av.open(io.BytesIO(init + segment), "r", format="mp4") as container:
                first_video_packet = True
                for packet in container.demux():  # ends with one empty packet per stream: a flush
                    stream = packet.stream
                    if stream.type == "video" and first_video_packet and packet.size:
                        report.first_video_keyframe = packet.is_keyframe
                        first_video_packet = False
                    for frame in packet.decode():
                        assert frame.pts is not None and frame.time_base is not None
                        t = float(frame.pts * frame.time_base)
                        if stream.type == "video":
                            report.video_pts.append(t)
                            report.width, report.height = frame.width, frame.height
                        elif stream.type == "audio":
                            report.audio.append((t, frame.samples / frame.sample_rate))
        except av.FFmpegError as exc:
            report.errors.append(f"{type(exc).__name__}: {exc}")
    report.errors += [msg for level, _name, msg in logs if level <= av.logging.ERROR]
    report.audio.sort()
    return report
