"""The packager service writes LL-HLS playlists to the store: parts over the real
in-process bus (encoded and decoded on the way), a real local store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import m3u8
from tests.packager.ll import check_ll, complete, delta, hint, in_progress
from tests.packager.test_packager_core_ll import PARTS, prt, seg

from tidecast.bus.memory import MemoryBus
from tidecast.messages import BroadcastStarted
from tidecast.packager.service import Packager
from tidecast.store.local import LocalStore

B = "20261202T000000Z-aaaaaa"


async def stored(store: LocalStore, want: str, timeout: float = 5.0) -> str:
    """The stored 720p playlist once it contains ``want``."""
    path = store.root / "hls/s/720p.m3u8"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if want in text:
            return text
        await asyncio.sleep(0.01)
    raise AssertionError(f"{want!r} never stored; last: {path.read_text() if path.exists() else None}")


async def test_parts_reach_the_stored_playlist_as_they_come(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "media")
    bus = MemoryBus()
    p = Packager(store, bus, window=100, target_duration=2.0, include_source=False, ll_hls=True,
                 part_target=1 / 3)  # fmt: skip
    await p.start()
    try:
        await bus.publish("broadcast.s", BroadcastStarted("s", B, time.time()))
        for n in range(4):
            for i in range(PARTS):
                await bus.publish("segment.s", prt(n, i))
                text = await stored(store, f'33,URI="{B}/720p/{n:06d}.{i}.m4s"')  # the part, not the hint
                pl = check_ll(text)
                assert in_progress(pl)[-1].uri == f"{B}/720p/{n:06d}.{i}.m4s"
            await bus.publish("segment.s", seg(n))
            text = await stored(store, f"\n{B}/720p/{n:06d}.m4s\n")
        pl = check_ll(text)
        assert len(complete(pl)) == 4 and hint(pl) == f"{B}/720p/000004.0.m4s"
        assert [bool(s.parts) for s in complete(pl)] == [False, True, True, True]
        # an origin answers _HLS_skip from the stored text (nothing old enough yet here)
        assert m3u8.loads(delta(text)).segments[-1].uri == f"{B}/720p/000003.m4s"
    finally:
        await p.aclose()
