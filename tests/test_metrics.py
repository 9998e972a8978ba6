"""The metrics registry and its Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

import math

import pytest

from tidecast.metrics import CONTENT_TYPE, MetricError, Registry


def test_renders_counters_and_gauges_with_labels() -> None:
    reg = Registry()
    lag = reg.gauge("tidecast_transcode_lag_seconds", "Transcode lag.", ("stream",))
    total = reg.counter("tidecast_degraded_segments_total", "Degraded segments.", ("stream",))
    lag.set(2.5, stream="main")
    lag.set(0, stream="alpha")
    total.inc(stream="main")
    total.inc(2, stream="main")
    assert reg.render() == (
        "# HELP tidecast_degraded_segments_total Degraded segments.\n"
        "# TYPE tidecast_degraded_segments_total counter\n"
        'tidecast_degraded_segments_total{stream="main"} 3\n'
        "# HELP tidecast_transcode_lag_seconds Transcode lag.\n"
        "# TYPE tidecast_transcode_lag_seconds gauge\n"
        'tidecast_transcode_lag_seconds{stream="alpha"} 0\n'
        'tidecast_transcode_lag_seconds{stream="main"} 2.5\n'
    )
    assert total.value(stream="main") == 3 and lag.value(stream="nobody") == 0
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_escapes_label_values_and_help() -> None:
    reg = Registry()
    g = reg.gauge("g", 'line one\nback\\slash "quoted"', ("a", "b"))
    g.set(1, a='x"y', b="c\\d\ne")
    out = reg.render().splitlines()
    assert out[0] == '# HELP g line one\\nback\\\\slash "quoted"'
    assert out[2] == 'g{a="x\\"y",b="c\\\\d\\ne"} 1'


def test_special_values_and_unlabelled_metrics() -> None:
    reg = Registry()
    g = reg.gauge("up", "Up.")
    g.set(math.inf)
    assert reg.render().splitlines()[-1] == "up +Inf"
    g.set(math.nan)
    assert reg.render().splitlines()[-1] == "up NaN"
    g.set(0.1)
    assert reg.render().splitlines()[-1] == "up 0.1"
    g.set(-3)
    assert reg.render().splitlines()[-1] == "up -3"


def test_a_family_without_samples_still_declares_itself() -> None:
    reg = Registry()
    reg.counter("x_total", "X.", ("stream",))
    assert reg.render() == "# HELP x_total X.\n# TYPE x_total counter\n"
    assert Registry().render() == ""


def test_get_or_create_and_misuse() -> None:
    reg = Registry()
    c = reg.counter("c_total", "C.", ("stream",))
    assert reg.counter("c_total", "C.", ("stream",)) is c
    with pytest.raises(MetricError):
        reg.gauge("c_total", "C.", ("stream",))  # another type
    with pytest.raises(MetricError):
        reg.counter("c_total", "C.", ("other",))  # other labels
    with pytest.raises(MetricError):
        c.inc(stream="main", extra="x")
    with pytest.raises(MetricError):
        c.inc(-1, stream="main")
    with pytest.raises(MetricError):
        reg.gauge("bad-name", "B.")
    with pytest.raises(MetricError):
        reg.gauge("ok", "B.", ("__reserved",))
