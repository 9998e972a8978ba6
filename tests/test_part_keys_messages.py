"""LL-HLS part keys and messages (the shared contract's names)."""

from __future__ import annotations

import pytest

from tidecast import keys
from tidecast.messages import MessageError, PartReady, WorkerPart, decode, encode


def test_part_keys_build_and_parse() -> None:
    key = keys.part("main", "b1", "720p", 12, 3)
    assert key == "hls/main/b1/720p/000012.3.m4s"
    p = keys.parse(key)
    assert p is not None and (p.kind, p.rendition, p.sequence, p.index) == ("part", "720p", 12, 3)
    seg = keys.parse(keys.segment("main", "b1", "720p", 12))
    assert seg is not None and (seg.kind, seg.index) == ("segment", -1)
    rec = keys.parse(keys.job_rendition("main", "b1", 12, "720p"))
    assert rec is not None and (rec.kind, rec.sequence) == ("job", 12)


def test_part_ready_round_trips_and_is_checked() -> None:
    msg = PartReady(stream="main", broadcast="b1", rendition="720p", sequence=4, index=2, start=12.5,
                    duration=0.333, key=keys.part("main", "b1", "720p", 4, 2), init_key="i", size=10,
                    independent=False, final=False, produced_at=1.0)  # fmt: skip
    assert msg.kind == "part.ready" and msg.part == 0
    assert decode(encode(msg)) == msg
    bad = encode(msg).replace(b'"final":false', b'"final":"no"')
    with pytest.raises(MessageError, match="final"):
        decode(bad)


def test_worker_part_lines() -> None:
    p = WorkerPart("720p", 1, 12.0, 0.3, "k", "i", 5, True, False)
    assert WorkerPart.from_line(p.to_json()) == p
    assert WorkerPart.from_line('{"ok": true}') is None  # a reply, not a part note
    assert WorkerPart.from_line("not json") is None
    with pytest.raises(MessageError):
        WorkerPart.from_line('{"part": {"rendition": "720p"}}')
    with pytest.raises(MessageError, match="size"):
        WorkerPart.from_line(p.to_json().replace('"size":5', '"size":"5"'))
