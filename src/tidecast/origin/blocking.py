"""LL-HLS delivery directives at the origin, sans-I/O (RFC 8216bis 6.2.5).

What a request asks (``parse_directives``: ``_HLS_msn``, ``_HLS_part``,
``_HLS_skip``), what a stored media playlist holds (``read_playlist``: a
cheap scan, run on every store re-read while someone waits), and what to do
about it (``decide``): answer now, refuse (400), or wait. The I/O shell
(``origin/reload.py``) owns the clock, the store and the bus; nothing here
waits or reads anything.

The rules, from RFC 8216bis:

- 6.2.5.2: ``_HLS_msn=M`` waits until the playlist holds segment M or later;
  with ``_HLS_part=N`` until it holds part N of segment M (or any later one).
  A part index past the last part of a complete segment means part 0 of the
  next one. ``_HLS_part`` without ``_HLS_msn`` is a Bad Request. M more than
  two segments past the last one listed, or N more than the Advance Part
  Limit (3 / PART-TARGET parts when PART-TARGET < 1 s, else 3) past the last
  part listed, is a Bad Request at once. A playlist with ENDLIST answers at
  once, directives ignored. A server that cannot answer after holding the
  request for three target durations should answer 503 (``hold_for``).
- 6.2.5.1: ``_HLS_skip=YES|v2`` gets a Playlist Delta Update
  (``delta_update``) when the playlist has CAN-SKIP-UNTIL and no ENDLIST;
  otherwise the directive is ignored. We never write EXT-X-DATERANGE, so
  ``v2`` is answered like ``YES``.
- 6.2.6: a part named by the playlist's EXT-X-PRELOAD-HINT must be
  requestable before it exists (the request waits); anything else not found
  is a 404 (``part_wait``).

A playlist that does not advertise ``CAN-BLOCK-RELOAD=YES`` is served at
once whatever the directives say: this origin blocks only where the
packager promised it would.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote_plus

HOLD_TARGETS = 3  # RFC 8216bis 6.2.5.2: hold a blocking request at most 3 target durations
MSN_AHEAD = 2  # ... and refuse one for a segment more than 2 past the last listed
MAX_DIGITS = 20  # a decimal-integer is at most 2^64 - 1 (RFC 8216bis 4.2)
SKIP_VALUES = ("YES", "v2")

_PART_NAME = re.compile(r"^(\d{6,})\.(\d+)\.m4s$")


class BadDirective(ValueError):
    """A delivery directive the origin refuses (answered 400 with this message)."""


@dataclass(frozen=True, slots=True)
class Directives:
    msn: int | None = None
    part: int | None = None
    skip: str | None = None  # "YES" or "v2"

    @property
    def blocking(self) -> bool:
        return self.msn is not None


def parse_directives(query: str) -> Directives | None:
    """The delivery directives of a raw query string; None when it has none. Other
    parameters are left alone (cache busters, CMCD); ``BadDirective`` for a value
    that is not what RFC 8216bis 6.2.5 allows."""
    if "_HLS_" not in query:
        return None
    seen: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        name = unquote_plus(name)
        if name not in ("_HLS_msn", "_HLS_part", "_HLS_skip"):
            continue  # not ours (an unknown _HLS_ name from another draft is ignored too)
        if name in seen:
            raise BadDirective(f"{name} is given more than once")
        seen[name] = unquote_plus(value)
    if not seen:
        return None
    msn = _decimal("_HLS_msn", seen["_HLS_msn"]) if "_HLS_msn" in seen else None
    part = _decimal("_HLS_part", seen["_HLS_part"]) if "_HLS_part" in seen else None
    if part is not None and msn is None:
        raise BadDirective("_HLS_part needs _HLS_msn (RFC 8216bis 6.2.5.2)")
    skip = seen.get("_HLS_skip")
    if skip is not None and skip not in SKIP_VALUES:
        raise BadDirective(f"_HLS_skip must be YES or v2, not {skip[:20]!r}")
    return Directives(msn, part, skip)


def _decimal(name: str, value: str) -> int:
    if not value or not value.isascii() or not value.isdigit() or len(value) > MAX_DIGITS:
        raise BadDirective(f"{name} must be a decimal integer, not {value[:24]!r}")
    return int(value)


# ---------------------------------------------------------------- the stored playlist


@dataclass(frozen=True, slots=True)
class PlaylistState:
    """What a media playlist lists, as far as blocking requests care."""

    media_sequence: int = 0
    last_msn: int = -1  # the last complete segment listed; -1: none
    last_part: int = -1  # the last part listed after it (of segment last_msn + 1); -1: none
    ended: bool = False
    target_duration: int = 0
    part_target: float | None = None  # EXT-X-PART-INF; None: no parts
    can_block: bool = False
    can_skip_until: float | None = None
    # complete segments whose parts are listed: msn -> number of parts
    segment_parts: dict[int, int] = field(default_factory=dict)
    hint: str | None = None  # the URI of the EXT-X-PRELOAD-HINT of TYPE=PART

    @property
    def position(self) -> tuple[int, int, bool]:
        """What a ``PlaylistUpdated`` says about this playlist: (msn, part, ended)."""
        return (self.last_msn, self.last_part, self.ended)


def _tag_value(data: bytes, tag: bytes) -> bytes | None:
    """The rest of the first line starting with ``tag`` (tags at the head are found
    near the start: ``find`` scans in C)."""
    pos = data.find(b"\n" + tag)
    if pos < 0:
        if not data.startswith(tag):
            return None
        pos = -1
    start = pos + 1 + len(tag)
    end = data.find(b"\n", start)
    return data[start : end if end >= 0 else len(data)].strip()


def _attr(attrs: bytes, name: bytes) -> bytes | None:
    """One attribute of an attribute list (RFC 8216bis 4.2), quotes removed."""
    m = re.search(rb"(?:^|,)" + re.escape(name) + rb'=("[^"]*"|[^,]*)', attrs)
    return m.group(1).strip(b'"') if m else None


def read_playlist(data: bytes) -> PlaylistState:
    """The state of a stored media playlist. Cheap: the head tags are found with
    ``find``, segments are counted with ``count``, and only the tail from the
    first ``EXT-X-PART`` on is read line by line. Lenient: a value that does not
    parse is taken as absent (the packager writes these; this reads them back)."""
    media_sequence = _int(_tag_value(data, b"#EXT-X-MEDIA-SEQUENCE:"), 0)
    target = _int(_tag_value(data, b"#EXT-X-TARGETDURATION:"), 0)
    part_inf = _tag_value(data, b"#EXT-X-PART-INF:")
    part_target = _float(_attr(part_inf, b"PART-TARGET")) if part_inf is not None else None
    control = _tag_value(data, b"#EXT-X-SERVER-CONTROL:") or b""
    can_block = _attr(control, b"CAN-BLOCK-RELOAD") == b"YES"
    can_skip = _float(_attr(control, b"CAN-SKIP-UNTIL"))
    segments = data.count(b"\n#EXTINF:") + data.startswith(b"#EXTINF:")
    # with no complete segment yet: the one before the segment in progress (-1 from the start)
    last_msn = media_sequence + segments - 1
    ended = b"\n#EXT-X-ENDLIST" in data

    parts: dict[int, int] = {}
    pending = 0
    first_part = data.find(b"\n#EXT-X-PART:")
    if first_part >= 0:
        msn = media_sequence + data.count(b"\n#EXTINF:", 0, first_part) + data.startswith(b"#EXTINF:")
        for line in data[first_part + 1 :].split(b"\n"):
            if line.startswith(b"#EXT-X-PART:"):
                pending += 1
            elif line and not line.startswith(b"#"):  # a segment's URI: it is complete
                if pending:
                    parts[msn] = pending
                msn += 1
                pending = 0
    hint = None
    hint_pos = data.rfind(b"\n#EXT-X-PRELOAD-HINT:")
    if hint_pos >= 0:
        end = data.find(b"\n", hint_pos + 1)
        attrs = data[hint_pos + len(b"\n#EXT-X-PRELOAD-HINT:") : end if end >= 0 else len(data)]
        uri = _attr(attrs, b"URI")
        if _attr(attrs, b"TYPE") == b"PART" and uri:
            hint = uri.decode("utf-8", "replace")
    return PlaylistState(
        media_sequence, last_msn, pending - 1, ended, target, part_target, can_block, can_skip,
        parts, hint,
    )  # fmt: skip


def _int(raw: bytes | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _float(raw: bytes | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


# ---------------------------------------------------------------- the decision


class Verdict(Enum):
    ANSWER = "answer"  # serve the playlist now
    TOO_FAR = "too_far"  # 400: more than the RFC lets a client ask ahead
    WAIT = "wait"  # hold the request until the playlist changes (or the hold ends)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    detail: str = ""
    skip: bool = False  # answer with a Playlist Delta Update


def advance_part_limit(part_target: float) -> float:
    """RFC 8216bis 6.2.5.2: how many parts past the last one a client may ask for."""
    return 3.0 / part_target if part_target < 1.0 else 3.0


def hold_for(state: PlaylistState | None, max_hold: float) -> float:
    """How long a blocking request may wait: three target durations of this playlist
    (RFC 8216bis 6.2.5.2), never more than ``max_hold`` (what the edge in front is
    configured to wait for)."""
    if state is None or state.target_duration <= 0:
        return max_hold
    return min(HOLD_TARGETS * state.target_duration, max_hold)


def max_hold(segment_target: float) -> float:
    """The longest hold of a stream cut at ``segment_target``: its target duration is
    the segment target rounded up (``MediaPlaylist``), held three times. The origin
    caps its holds here and the edge waits a little longer than this."""
    return float(HOLD_TARGETS * max(1, math.ceil(segment_target - 1e-6)))


def part_wait(state: PlaylistState | None, max_hold: float) -> float:
    """How long a request for the hinted part waits for it to be stored: three part
    targets, at least a second. The hinted part is due one part target after the
    previous one was listed; two more cover an encoder or a store running late
    without keeping a request (and an edge's request lock) for a stream that has
    stopped. Never more than the playlist hold."""
    pt = state.part_target if state is not None and state.part_target else 1.0
    return min(max(1.0, 3.0 * pt), hold_for(state, max_hold))


def _parts_per_segment(state: PlaylistState) -> int:
    if state.segment_parts:
        return max(state.segment_parts.values())
    assert state.part_target
    return max(1, math.ceil(max(1, state.target_duration) / state.part_target))


def satisfied(state: PlaylistState, msn: int, part: int | None) -> bool:
    """Does the playlist hold segment ``msn`` (or part ``part`` of it), or anything later?"""
    if part is None or state.part_target is None:  # a playlist without parts: whole segments
        return msn <= state.last_msn
    if msn < state.last_msn:
        return True
    if msn == state.last_msn:
        n = state.segment_parts.get(msn)
        # listed whole (its parts never seen, or scrolled out of the part window), or the
        # part is among those listed; past its last part means part 0 of the next segment
        return n is None or part < n or state.last_part >= 0
    if msn == state.last_msn + 1:
        return part <= state.last_part
    return False


def decide(state: PlaylistState, d: Directives) -> Decision:
    """Answer, refuse or wait: one request against one version of the playlist."""
    skip = d.skip is not None and state.can_skip_until is not None and not state.ended
    if state.ended or d.msn is None or not state.can_block:
        return Decision(Verdict.ANSWER, skip=skip)
    if d.msn > state.last_msn + MSN_AHEAD:
        return Decision(Verdict.TOO_FAR, f"_HLS_msn={d.msn} is more than {MSN_AHEAD} segments past "
                                         f"the last one listed ({state.last_msn})", skip)  # fmt: skip
    if d.part is not None and state.part_target is not None:
        n = _parts_per_segment(state)
        if state.last_part >= 0:
            last = (state.last_msn + 1) * n + state.last_part
        else:  # nothing of the segment in progress yet: its part 0 is the next
            last = (state.last_msn + 1) * n - 1
        ahead = d.msn * n + d.part - last
        limit = advance_part_limit(state.part_target)
        if ahead > limit:
            return Decision(Verdict.TOO_FAR, f"_HLS_part={d.part} of _HLS_msn={d.msn} is {ahead} parts "
                                             f"past the last one listed, over the limit of {limit:.4g}",
                            skip)  # fmt: skip
    if satisfied(state, d.msn, d.part):
        return Decision(Verdict.ANSWER, skip=skip)
    return Decision(Verdict.WAIT, skip=skip)


# ---------------------------------------------------------------- delta updates

_SEGMENT_TAGS = (b"#EXTINF:", b"#EXT-X-DISCONTINUITY\n", b"#EXT-X-MAP:", b"#EXT-X-PROGRAM-DATE-TIME:",
                 b"#EXT-X-GAP", b"#EXT-X-PART:", b"#EXT-X-BYTERANGE:", b"#EXT-X-KEY:",
                 b"#EXT-X-BITRATE:", b"#EXT-X-DATERANGE:")  # fmt: skip


def _segment_line(line: bytes) -> bool:
    return (line + b"\n").startswith(_SEGMENT_TAGS) or (bool(line) and not line.startswith(b"#"))


def delta_update(data: bytes, skip_until: float) -> bytes:
    """The Playlist Delta Update of ``data`` (RFC 8216bis 6.2.5.1, 4.4.5.2): segments
    whose end is more than ``skip_until`` seconds before the end of the last segment
    are replaced, with their tags, by one ``EXT-X-SKIP``. The EXT-X-MAP in force is
    repeated before the first segment kept, so a client never has to look into the
    skipped part for it. Nothing to skip: the playlist as it is."""
    lines = data.split(b"\n")
    head_end = next((i for i, line in enumerate(lines) if _segment_line(line)), len(lines))
    blocks: list[tuple[list[bytes], float]] = []  # each segment's lines (URI last), duration
    current: list[bytes] = []
    duration = 0.0
    tail_start = head_end
    for i in range(head_end, len(lines)):
        line = lines[i]
        current.append(line)
        if line.startswith(b"#EXTINF:"):
            duration = _float(line[len(b"#EXTINF:") :].split(b",", 1)[0]) or 0.0
        elif line and not line.startswith(b"#"):
            blocks.append((current, duration))
            current, duration = [], 0.0
            tail_start = i + 1
    total = sum(d for _, d in blocks)
    end, skipped, in_force = 0.0, 0, None
    for block, d in blocks[:-1]:  # the last segment always stays
        end += d
        if total - end <= skip_until:
            break
        skipped += 1
        maps = [line for line in block if line.startswith(b"#EXT-X-MAP:")]
        in_force = maps[-1] if maps else in_force
    if skipped == 0:
        return data
    kept = [line for block, _ in blocks[skipped:] for line in block]
    if in_force is not None and not any(line.startswith(b"#EXT-X-MAP:") for line in blocks[skipped][0]):
        kept.insert(0, in_force)
    out = [*lines[:head_end], b"#EXT-X-SKIP:SKIPPED-SEGMENTS=%d" % skipped, *kept, *lines[tail_start:]]
    return b"\n".join(out)


# ---------------------------------------------------------------- parts


@dataclass(frozen=True, slots=True)
class PartRef:
    """A part's key: ``hls/<stream>/<broadcast>/<rendition>/<sequence:06d>.<index>.m4s``."""

    stream: str
    broadcast: str
    rendition: str
    sequence: int
    index: int

    @property
    def directory(self) -> str:
        return f"hls/{self.stream}/{self.broadcast}/{self.rendition}"


def parse_part_key(key: str) -> PartRef | None:
    """The part a store key names, or None (a segment, a playlist, anything else)."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "hls" or not all(parts):
        return None
    m = _PART_NAME.match(parts[4])
    if m is None:
        return None
    return PartRef(parts[1], parts[2], parts[3], int(m.group(1)), int(m.group(2)))


def hinted_part(state: PlaylistState, playlist_key: str) -> PartRef | None:
    """The part the playlist's preload hint names (its URI is relative to the playlist)."""
    if state.hint is None or "://" in state.hint or state.hint.startswith("/"):
        return None
    return parse_part_key(posixpath.normpath(posixpath.join(posixpath.dirname(playlist_key), state.hint)))


class PartVerdict(Enum):
    WAIT = "wait"  # the hinted part (or the one right after it): wait for it to be stored
    GONE = "gone"  # 404: not coming (not hinted, too far, the segment is listed whole)


def part_wait_verdict(state: PlaylistState | None, playlist_key: str, ref: PartRef) -> PartVerdict:
    """Whether a request for a part that is not stored yet should wait for it.

    It waits for the hinted part, and for the one after it (a client whose playlist
    is one part newer than the copy this origin read). Everything else is 404 at
    once (RFC 8216bis 6.2.6): a part far from the live edge, of another broadcast,
    of a segment already listed complete, or of an ended playlist."""
    if state is None or state.ended:
        return PartVerdict.GONE
    hint = hinted_part(state, playlist_key)
    if hint is None or hint.directory != ref.directory or ref.sequence <= state.last_msn:
        return PartVerdict.GONE
    wanted = (ref.sequence, ref.index)
    if wanted in ((hint.sequence, hint.index), (hint.sequence, hint.index + 1), (hint.sequence + 1, 0)):
        return PartVerdict.WAIT
    return PartVerdict.GONE
