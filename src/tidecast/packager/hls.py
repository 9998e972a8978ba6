"""HLS playlist model and rendering (RFC 8216 / 8216bis), sans-I/O.

``MediaPlaylist`` is a live sliding window: EXT-X-MAP whenever the init segment
changes, EXT-X-DISCONTINUITY where the timeline breaks (publisher reconnect,
new encoding parameters), EXT-X-PROGRAM-DATE-TIME on every segment, EXT-X-GAP
for segments that could not be produced, and EXT-X-DISCONTINUITY-SEQUENCE kept
right as the window slides. EXT-X-TARGETDURATION never decreases and is always
at least every EXTINF rounded to the nearest integer.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

HLS_VERSION = 8  # EXT-X-GAP needs 8; EXT-X-MAP in a media playlist needs 6+


@dataclass(frozen=True, slots=True)
class PlaylistSegment:
    msn: int
    uri: str
    duration: float
    init_uri: str
    program_date_time: float | None = None  # epoch seconds
    discontinuity: bool = False
    gap: bool = False


def format_pdt(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class MediaPlaylist:
    def __init__(self, window: int, target_duration: float) -> None:
        if window < 3:
            raise ValueError("a live playlist window needs at least 3 segments")
        self.window = window
        self.target_duration = max(1, math.ceil(target_duration - 1e-6))
        self.segments: deque[PlaylistSegment] = deque()
        self.discontinuity_sequence = 0
        self.ended = False
        self.playlist_type: str | None = None  # "VOD" for a finished recording

    @property
    def media_sequence(self) -> int:
        return self.segments[0].msn if self.segments else 0

    @property
    def next_msn(self) -> int:
        return self.segments[-1].msn + 1 if self.segments else 0

    def append(self, seg: PlaylistSegment) -> None:
        if self.segments and seg.msn <= self.segments[-1].msn:
            raise ValueError(f"segment {seg.msn} is not after {self.segments[-1].msn}")
        self.ended = False
        self.target_duration = max(self.target_duration, round(seg.duration))
        self.segments.append(seg)
        while len(self.segments) > self.window:
            gone = self.segments.popleft()
            if gone.discontinuity:  # its tag leaves the playlist: count it
                self.discontinuity_sequence += 1

    def end(self) -> None:
        self.ended = True

    def heal(self, seg: PlaylistSegment) -> bool:
        """Replace the EXT-X-GAP entry at ``seg.msn`` with the real segment, if the window
        still lists it as a gap; True when it did. The URI stays the same (a gap is
        listed under the key its segment would have), so a player that already skipped
        the gap and one that loads the healed playlist see one timeline."""
        for i, old in enumerate(self.segments):
            if old.msn == seg.msn:
                if not old.gap or seg.gap:
                    return False
                self.segments[i] = dataclasses.replace(seg, discontinuity=old.discontinuity)
                self.target_duration = max(self.target_duration, round(seg.duration))
                return True
        return False

    def render(self) -> str:
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{HLS_VERSION}",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
        ]
        if self.playlist_type:
            lines.append(f"#EXT-X-PLAYLIST-TYPE:{self.playlist_type}")
        if self.discontinuity_sequence:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}")
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
        current_map = None
        for seg in self.segments:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init_uri != current_map:
                lines.append(f'#EXT-X-MAP:URI="{seg.init_uri}"')
                current_map = seg.init_uri
            if seg.program_date_time is not None:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(seg.program_date_time)}")
            if seg.gap:
                lines.append("#EXT-X-GAP")
            lines.append(f"#EXTINF:{seg.duration:.5f},")
            lines.append(seg.uri)
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


EPOCH_TAG = "#TIDECAST-EPOCH:"  # a comment line (players ignore it): the writer's lease epoch


def stamp_epoch(text: str, epoch: int) -> str:
    """``text`` with the writer's lease epoch after ``#EXTM3U`` (see ``epoch_of``)."""
    head, _, rest = text.partition("\n")
    return f"{head}\n{EPOCH_TAG}{epoch}\n{rest}"


def epoch_of(data: bytes) -> int:
    """The lease epoch a playlist was written under (0 when it carries none)."""
    head = data[:200]
    pos = head.find(EPOCH_TAG.encode())
    if pos < 0:
        return 0
    digits = head[pos + len(EPOCH_TAG) :].split(b"\n", 1)[0].strip()
    return int(digits) if digits.isdigit() else 0


def parse_media_playlist(text: str, window: int, target_duration: float) -> MediaPlaylist:
    """Read back a media playlist ``MediaPlaylist.render`` wrote (a packager taking a
    stream over continues from what is stored). Tags it never writes are ignored."""
    pl = MediaPlaylist(window, target_duration)
    msn, init, pdt, duration = 0, "", None, 0.0
    disc = gap = False
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE:"):
            pl.discontinuity_sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            pl.target_duration = max(pl.target_duration, int(line.split(":", 1)[1]))
        elif line == "#EXT-X-DISCONTINUITY":
            disc = True
        elif line.startswith('#EXT-X-MAP:URI="'):
            init = line[len('#EXT-X-MAP:URI="') :].split('"', 1)[0]
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            stamp = line.split(":", 1)[1].replace("Z", "+00:00")
            pdt = datetime.fromisoformat(stamp).timestamp()
        elif line == "#EXT-X-GAP":
            gap = True
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line == "#EXT-X-ENDLIST":
            pl.ended = True
        elif line and not line.startswith("#"):
            pl.segments.append(PlaylistSegment(msn, line, duration, init, pdt, disc, gap))
            msn += 1
            pdt, disc, gap = None, False, False
    return pl


@dataclass(frozen=True, slots=True)
class Variant:
    uri: str
    bandwidth: int  # peak bits/s
    average_bandwidth: int
    codecs: str
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    audio_group: str = ""


@dataclass(frozen=True, slots=True)
class AudioRendition:
    """An EXT-X-MEDIA audio rendition shared by the video variants."""

    uri: str
    group: str = "audio"
    name: str = "audio"
    language: str = ""


def render_multivariant(variants: list[Variant], audio: AudioRendition | None = None) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lang = f',LANGUAGE="{audio.language}"' if audio.language else ""
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{audio.group}",NAME="{audio.name}"{lang},'
            f'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",URI="{audio.uri}"'
        )
    for v in sorted(variants, key=lambda v: -v.bandwidth):
        attrs = [f"BANDWIDTH={v.bandwidth}", f"AVERAGE-BANDWIDTH={v.average_bandwidth}"]
        if v.codecs:
            attrs.append(f'CODECS="{v.codecs}"')
        if v.width and v.height:
            attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        if v.audio_group:
            attrs.append(f'AUDIO="{v.audio_group}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(v.uri)
    return "\n".join(lines) + "\n"
