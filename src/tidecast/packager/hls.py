"""HLS playlist model and rendering (RFC 8216 / 8216bis), sans-I/O.

``MediaPlaylist`` is a live sliding window: EXT-X-MAP whenever the init segment
changes, EXT-X-DISCONTINUITY where the timeline breaks (publisher reconnect,
new encoding parameters), EXT-X-PROGRAM-DATE-TIME on every segment, EXT-X-GAP
for segments that could not be produced, and EXT-X-DISCONTINUITY-SEQUENCE kept
right as the window slides. EXT-X-TARGETDURATION never decreases and is always
at least every EXTINF rounded to the nearest integer.

Low latency (``low_latency``, RFC 8216bis 4.4.3.7-8, 4.4.4.9, 4.4.5.2-4): version
9, EXT-X-SERVER-CONTROL (blocking reload, delta updates), and with a
``part_target`` the parts (EXT-X-PART) of the last ``PART_SEGMENTS`` segments and
of the segment in progress, a preload hint for the next part and the other
renditions' reports. A part, once listed, is never changed: a segment completes
with exactly the parts listed for it, or (when the caller says so) whole, without
them. Without ``low_latency`` the output is plain RFC 8216 as before.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

HLS_VERSION = 8  # EXT-X-GAP needs 8; EXT-X-MAP in a media playlist needs 6+
LL_HLS_VERSION = 9  # EXT-X-SKIP (delta updates) needs 9 (RFC 8216bis 8)
PART_SEGMENTS = 3  # complete segments that keep their parts listed (8216bis 6.2.2: ~3 target durations)
SKIP_TARGETS = 6  # CAN-SKIP-UNTIL in target durations: the minimum 8216bis 4.4.3.8 allows
HOLD_BACK_PARTS = 3  # PART-HOLD-BACK in part targets (4.4.3.8: SHOULD be at least 3)


@dataclass(frozen=True, slots=True)
class PlaylistPart:
    """One EXT-X-PART: ``index`` within its segment (0-based), ``independent`` when it
    starts with a keyframe, ``gap`` when it could not be had (GAP=YES)."""

    index: int
    uri: str
    duration: float
    independent: bool = False
    gap: bool = False


@dataclass(frozen=True, slots=True)
class PlaylistSegment:
    msn: int
    uri: str
    duration: float
    init_uri: str
    program_date_time: float | None = None  # epoch seconds
    discontinuity: bool = False
    gap: bool = False
    parts: tuple[PlaylistPart, ...] = ()


@dataclass(frozen=True, slots=True)
class RenditionReport:
    """EXT-X-RENDITION-REPORT: where another rendition of the stream is."""

    uri: str  # relative to the playlist that carries the report
    last_msn: int
    last_part: int = -1  # -1: that rendition lists no part (LAST-PART left out)


def format_pdt(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ceil_ms(seconds: float) -> float:
    """``seconds`` rounded up to the millisecond (an advertised upper bound)."""
    return math.ceil(round(seconds * 1000, 6)) / 1000


class MediaPlaylist:
    def __init__(
        self, window: int, target_duration: float, *, low_latency: bool = False,
        part_target: float | None = None,
    ) -> None:  # fmt: skip
        if window < 3:
            raise ValueError("a live playlist window needs at least 3 segments")
        if part_target is not None and not part_target > 0:
            raise ValueError(f"part target {part_target} is not positive")
        self.window = window
        self.target_duration = max(1, math.ceil(target_duration - 1e-6))
        self.segments: deque[PlaylistSegment] = deque()
        self.discontinuity_sequence = 0
        self.ended = False
        self.playlist_type: str | None = None  # "VOD" for a finished recording
        self.low_latency = low_latency
        # LL: the advertised Part Target Duration, at least every listed part's duration;
        # None: no parts (no EXT-X-PART-INF)
        self.part_target = part_target
        # the segment being made: its tags and the parts listed so far (uri "", not complete)
        self.in_progress: PlaylistSegment | None = None
        self.preload_hint: str | None = None  # URI of the part expected next
        self.rendition_reports: tuple[RenditionReport, ...] = ()

    @property
    def media_sequence(self) -> int:
        if self.segments:
            return self.segments[0].msn
        return self.in_progress.msn if self.in_progress is not None else 0

    @property
    def next_msn(self) -> int:
        """The media sequence number of the next complete segment."""
        if self.segments:
            return self.segments[-1].msn + 1
        return self.in_progress.msn if self.in_progress is not None else 0

    @property
    def last_msn(self) -> int:
        """The last complete segment's media sequence number (-1: none)."""
        return self.segments[-1].msn if self.segments else -1

    @property
    def last_part(self) -> int:
        """The index of the last part listed after the last complete segment (-1: none)."""
        return self.in_progress.parts[-1].index if self.in_progress is not None else -1

    def report(self, uri: str) -> RenditionReport | None:
        """This playlist as another rendition's EXT-X-RENDITION-REPORT (None: empty).
        LAST-MSN is the segment of the last part when there are parts (8216bis 4.4.5.4)."""
        if self.in_progress is not None:
            return RenditionReport(uri, self.in_progress.msn, self.last_part)
        if not self.segments:
            return None
        last = self.segments[-1]
        return RenditionReport(uri, last.msn, last.parts[-1].index if last.parts else -1)

    def _check_part(self, part: PlaylistPart) -> None:
        if self.part_target is None:
            raise ValueError("parts need a part target")
        if not part.uri or part.index < 0 or not part.duration >= 0:
            raise ValueError(f"bad part {part}")
        if part.duration > self.part_target + 1e-9:  # 4.4.4.9: at most the Part Target Duration
            raise ValueError(f"part {part.uri} of {part.duration} s is longer than the part target "
                             f"{self.part_target} s")  # fmt: skip

    def add_part(
        self, part: PlaylistPart, *, msn: int, init_uri: str, program_date_time: float | None = None,
        discontinuity: bool = False,
    ) -> None:  # fmt: skip
        """List the next part of segment ``msn``, the one in progress (the next after the
        last complete one). The segment's tags (``init_uri``, date, discontinuity) are
        fixed by its first part: they come before it (8216bis 4.4.4.9)."""
        self._check_part(part)
        cur = self.in_progress
        if cur is None:
            if self.segments and msn != self.next_msn:
                raise ValueError(f"part of segment {msn}: the segment in progress is {self.next_msn}")
            if part.index != 0:
                raise ValueError(f"segment {msn} starts with part {part.index}, not 0")
            self.in_progress = PlaylistSegment(msn, "", part.duration, init_uri, program_date_time,
                                               discontinuity, parts=(part,))  # fmt: skip
            self.ended = False
            return
        if msn != cur.msn or part.index != len(cur.parts) or init_uri != cur.init_uri:
            raise ValueError(f"part {part.index} of segment {msn} does not follow part "
                             f"{len(cur.parts) - 1} of segment {cur.msn}")  # fmt: skip
        self.in_progress = dataclasses.replace(cur, duration=cur.duration + part.duration,
                                               parts=cur.parts + (part,))  # fmt: skip

    def drop_in_progress(self) -> None:
        """Forget the segment in progress (its parts leave the playlist)."""
        self.in_progress = None

    def append(self, seg: PlaylistSegment) -> None:
        """Add a complete segment. Its ``parts`` (none: listed whole) must extend the
        parts already listed for it; the segment in progress ends here either way."""
        if self.segments and seg.msn <= self.segments[-1].msn:
            raise ValueError(f"segment {seg.msn} is not after {self.segments[-1].msn}")
        cur, self.in_progress = self.in_progress, None
        if seg.parts:
            if seg.gap:
                raise ValueError(f"gap segment {seg.msn} with parts")
            for i, p in enumerate(seg.parts):
                self._check_part(p)
                if p.index != i:
                    raise ValueError(f"segment {seg.msn}: part {p.index} where part {i} belongs")
            if cur is not None and cur.msn == seg.msn and (
                seg.parts[: len(cur.parts)] != cur.parts or (seg.init_uri, seg.program_date_time,
                                                             seg.discontinuity)
                != (cur.init_uri, cur.program_date_time, cur.discontinuity)
            ):  # fmt: skip
                self.in_progress = cur
                raise ValueError(f"segment {seg.msn} would change parts already listed")
        self.ended = False
        self.target_duration = max(self.target_duration, round(seg.duration))
        self.segments.append(seg)
        while len(self.segments) > self.window:
            gone = self.segments.popleft()
            if gone.discontinuity:  # its tag leaves the playlist: count it
                self.discontinuity_sequence += 1
        if len(self.segments) > PART_SEGMENTS:  # parts are for the live edge only
            old = self.segments[-PART_SEGMENTS - 1]
            if old.parts:
                self.segments[-PART_SEGMENTS - 1] = dataclasses.replace(old, parts=())

    def end(self) -> None:
        self.ended = True
        self.in_progress = None  # a segment that never completed: its parts go

    def heal(self, seg: PlaylistSegment) -> bool:
        """Replace the EXT-X-GAP entry at ``seg.msn`` with the real segment, if the window
        still lists it as a gap; True when it did. The URI stays the same (a gap is
        listed under the key its segment would have), so a player that already skipped
        the gap and one that loads the healed playlist see one timeline."""
        for i, old in enumerate(self.segments):
            if old.msn == seg.msn:
                if not old.gap or seg.gap:
                    return False
                self.segments[i] = dataclasses.replace(seg, discontinuity=old.discontinuity, parts=())
                self.target_duration = max(self.target_duration, round(seg.duration))
                return True
        return False

    @property
    def skip_until(self) -> float:
        """CAN-SKIP-UNTIL, the Skip Boundary: 6 target durations, the least allowed."""
        return SKIP_TARGETS * self.target_duration

    def render(self) -> str:
        """The playlist (its Playlist Delta Updates are cut from the stored text by the
        origin: ``origin.blocking.delta_update``)."""
        ll = self.low_latency
        parts = ll and self.part_target is not None
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{LL_HLS_VERSION if ll else HLS_VERSION}",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
        ]
        if self.playlist_type:
            lines.append(f"#EXT-X-PLAYLIST-TYPE:{self.playlist_type}")
        if self.discontinuity_sequence:  # a skip leaves it as it is (4.4.5.2)
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}")
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
        if ll:
            control = ["CAN-BLOCK-RELOAD=YES"]
            if parts:
                assert self.part_target is not None
                hold = ceil_ms(HOLD_BACK_PARTS * ceil_ms(self.part_target))
                control.append(f"PART-HOLD-BACK={hold:.3f}")
            control.append(f"CAN-SKIP-UNTIL={self.skip_until:.1f}")
            lines.append("#EXT-X-SERVER-CONTROL:" + ",".join(control))
            if parts:
                assert self.part_target is not None
                lines.append(f"#EXT-X-PART-INF:PART-TARGET={ceil_ms(self.part_target):.3f}")
        listed = list(self.segments)
        if parts and self.in_progress is not None:
            listed.append(self.in_progress)
        current_map = None
        for seg in listed:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init_uri != current_map:
                lines.append(f'#EXT-X-MAP:URI="{seg.init_uri}"')
                current_map = seg.init_uri
            if seg.program_date_time is not None:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(seg.program_date_time)}")
            if parts:
                lines.extend(_part_line(p) for p in seg.parts)
            if seg is self.in_progress:
                break
            if seg.gap:
                lines.append("#EXT-X-GAP")
            lines.append(f"#EXTINF:{seg.duration:.5f},")
            lines.append(seg.uri)
        if parts and self.preload_hint and not self.ended:  # 4.4.5.3: never with ENDLIST
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{self.preload_hint}"')
        if ll and not self.ended:
            for rep in self.rendition_reports:
                last_part = f",LAST-PART={rep.last_part}" if rep.last_part >= 0 else ""
                lines.append(f'#EXT-X-RENDITION-REPORT:URI="{rep.uri}",LAST-MSN={rep.last_msn}{last_part}')
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


def _part_line(p: PlaylistPart) -> str:
    line = f'#EXT-X-PART:DURATION={p.duration:.5f},URI="{p.uri}"'
    if p.independent:
        line += ",INDEPENDENT=YES"
    if p.gap:
        line += ",GAP=YES"
    return line


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


_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def _attrs(line: str) -> dict[str, str]:
    """The attribute list of a tag line, quotes removed."""
    return {m.group(1): m.group(2).strip('"') for m in _ATTR.finditer(line.split(":", 1)[1])}


def parse_media_playlist(text: str, window: int, target_duration: float) -> MediaPlaylist:
    """Read back a media playlist ``MediaPlaylist.render`` wrote (a packager taking a
    stream over continues from what is stored; an origin renders its delta update).
    Everything it writes reads back, the segment in progress included; tags it never
    writes are ignored. A delta update cannot be read back (it lacks segments)."""
    pl = MediaPlaylist(window, target_duration)
    msn, init, pdt, duration = 0, "", None, 0.0
    disc = gap = False
    parts: list[PlaylistPart] = []
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
        elif line.startswith("#EXT-X-SERVER-CONTROL:"):
            pl.low_latency = True
        elif line.startswith("#EXT-X-PART-INF:"):
            pl.part_target = float(_attrs(line)["PART-TARGET"])
        elif line.startswith("#EXT-X-PART:"):
            a = _attrs(line)
            parts.append(PlaylistPart(len(parts), a["URI"], float(a["DURATION"]),
                                      a.get("INDEPENDENT") == "YES", a.get("GAP") == "YES"))  # fmt: skip
        elif line.startswith("#EXT-X-PRELOAD-HINT:"):
            pl.preload_hint = _attrs(line)["URI"]
        elif line.startswith("#EXT-X-RENDITION-REPORT:"):
            a = _attrs(line)
            pl.rendition_reports += (RenditionReport(a["URI"], int(a["LAST-MSN"]), int(a.get("LAST-PART", -1))),)
        elif line.startswith("#EXT-X-SKIP:"):
            raise ValueError("a playlist delta update cannot be read back")
        elif line and not line.startswith("#"):
            pl.segments.append(PlaylistSegment(msn, line, duration, init, pdt, disc, gap, tuple(parts)))
            msn += 1
            pdt, disc, gap, parts = None, False, False, []
    if parts:  # the segment in progress
        pl.in_progress = PlaylistSegment(msn, "", sum(p.duration for p in parts), init, pdt, disc,
                                         parts=tuple(parts))  # fmt: skip
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
