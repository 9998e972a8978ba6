"""LL-HLS media playlists written by hand in the packager's format (the tag set of the
low-latency contract), for tests of what origins and edges do with them."""

from __future__ import annotations


def ll_playlist(
    segments: int, parts: int = 0, *, media_sequence: int = 0, per_segment: int = 6,
    part_segments: int = 3, target: int = 2, part_target: float = 1 / 3, ended: bool = False,
    hint: bool = True, broadcast: str = "b1", rendition: str = "720p", duration: float = 2.0,
    maps: dict[int, str] | None = None, can_block: bool = True, epoch: int = 0,
) -> str:  # fmt: skip
    """``segments`` complete segments from ``media_sequence`` on, the parts of the last
    ``part_segments`` of them (``per_segment`` each), ``parts`` parts of the segment in
    progress, and the preload hint of the next part. ``maps``: msn -> init name (an
    EXT-X-MAP before that segment; the first segment always has one)."""
    d = f"{broadcast}/{rendition}"
    maps = {media_sequence: "init-a.mp4", **(maps or {})}
    control = (f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f},"
               f"CAN-SKIP-UNTIL={6.0 * target:.1f}")  # fmt: skip
    lines = ["#EXTM3U", f"#TIDECAST-EPOCH:{epoch}", "#EXT-X-VERSION:9", f"#EXT-X-TARGETDURATION:{target}"]
    if can_block:
        lines.append(control)
    lines += [f"#EXT-X-PART-INF:PART-TARGET={part_target:.5f}", f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}",
              "#EXT-X-INDEPENDENT-SEGMENTS"]  # fmt: skip
    last = media_sequence + segments - 1

    def part_lines(msn: int, n: int) -> list[str]:
        return [f'#EXT-X-PART:DURATION={part_target:.5f},URI="{d}/{msn:06d}.{i}.m4s"'
                + (",INDEPENDENT=YES" if i == 0 else "") for i in range(n)]  # fmt: skip

    for msn in range(media_sequence, last + 1):
        if msn in maps:
            lines.append(f'#EXT-X-MAP:URI="{d}/{maps[msn]}"')
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:2030-01-01T00:{msn // 30:02d}:{msn * 2 % 60:02d}.000Z")
        if msn > last - part_segments:
            lines += part_lines(msn, per_segment)
        lines += [f"#EXTINF:{duration:.5f},", f"{d}/{msn:06d}.m4s"]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    else:
        lines += part_lines(last + 1, parts)
        if hint:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{d}/{last + 1:06d}.{parts}.m4s"')
        lines.append(f'#EXT-X-RENDITION-REPORT:URI="480p.m3u8",LAST-MSN={last},LAST-PART={parts - 1}')
    return "\n".join(lines) + "\n"
