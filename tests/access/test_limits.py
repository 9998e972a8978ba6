"""Password attempts: per address and per stream, in a sliding minute."""

from __future__ import annotations

from tidecast.access.limits import AttemptLimiter


def test_per_address_then_it_passes() -> None:
    lim = AttemptLimiter(per_address=3, per_stream=100)
    for i in range(3):
        assert lim.allowed("1.2.3.4", "s", 100.0 + i) == 0
        lim.failed("1.2.3.4", "s", 100.0 + i)
    wait = lim.allowed("1.2.3.4", "s", 103.0)
    assert wait == 57.0  # the oldest failure leaves the window at 160
    assert lim.allowed("5.6.7.8", "s", 103.0) == 0  # another address is not held back
    assert lim.allowed("1.2.3.4", "s", 160.5) == 0


def test_per_stream_from_everywhere() -> None:
    lim = AttemptLimiter(per_address=1000, per_stream=5)
    for i in range(5):
        lim.failed(f"10.0.0.{i}", "s", 10.0)
    assert lim.allowed("10.0.0.99", "s", 11.0) > 0
    assert lim.allowed("10.0.0.99", "other", 11.0) == 0


def test_memory_is_bounded() -> None:
    lim = AttemptLimiter(per_address=2, max_tracked=100)
    for i in range(1000):
        lim.failed(f"a{i}", "s", 1.0)
    assert len(lim._by_address) == 100 and len(lim._by_stream["s"]) <= lim.per_stream
