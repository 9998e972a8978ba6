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


AAC_FRAME = 1024 / 48000


def fetch_segments(base: str, playlist: object, *, video: bool = True) -> list[tuple[object, bytes, SegmentReport]]:
    """Download and decode every segment a playlist lists: each decodes cleanly,
    and (for video) starts with a keyframe. Returns (segment, bytes, report)."""
    import httpx

    segments = playlist.segments  # type: ignore[attr-defined]
    init = httpx.get(f"{base}/{segments[0].init_section.uri}").content
    out = []
    for seg in segments:
        data = httpx.get(f"{base}/{seg.uri}").content
        rep = decode_segment(seg.uri, init, data)
        assert not rep.errors, f"{seg.uri}: {rep.errors}"
        if video:
            assert rep.video_pts and rep.first_video_keyframe, f"{seg.uri} does not start with a keyframe"
        out.append((seg, data, rep))
    return out


def assert_video_continuous(reports: list[SegmentReport], fps: float) -> None:
    """Each segment's first picture follows the previous segment's last by one frame."""
    frame = 1 / fps
    for a, b in zip(reports, reports[1:], strict=False):
        gap = b.video_start - (a.video_end + frame)
        assert abs(gap) <= frame + 1e-3, f"video gap/overlap {gap * 1000:.1f} ms before {b.name}"


def assert_audio_continuous(reports: list[SegmentReport]) -> None:
    """Audio runs on across segment boundaries (no gap or overlap beyond one AAC frame)."""
    for a, b in zip(reports, reports[1:], strict=False):
        agap = b.audio_start - a.audio_end
        assert abs(agap) <= AAC_FRAME + 1e-3, f"audio gap/overlap {agap * 1000:.1f} ms before {b.name}"
