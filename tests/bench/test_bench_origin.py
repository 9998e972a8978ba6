"""``tidecast bench origin`` end to end, briefly: real media, both servers, wrk.

Only that it runs and reports both arms and the ratios; no claim on speed (a
one-second run on a shared machine says nothing about it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tidecast.bench.origin import parse_wrk
from tidecast.bench.processes import nginx_exe

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]


def test_bench_origin_reports_both_servers_and_the_ratio() -> None:
    if shutil.which("wrk") is None or nginx_exe() is None:
        pytest.fail("wrk and nginx are needed: scripts/setup.sh --test installs them")
    out = subprocess.run(
        [sys.executable, "-m", "tidecast", "bench", "origin", "--seconds", "1",
         "--connections", "8", "--media-seconds", "6", "--size", "640x360"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for target in ("segment", "playlist"):
        for server in ("nginx", "tidecast"):
            row = re.search(rf"^{target}\s+{server}\s+(\d+)\s+([\d.]+)\s+([\d.]+) ms", out.stdout,
                            re.MULTILINE)  # fmt: skip
            assert row, out.stdout
            assert int(row.group(1)) > 0
        assert re.search(rf"ratio tidecast/nginx, {target}s\s*: [\d.]+x req/s, [\d.]+x MB/s",
                         out.stdout), out.stdout  # fmt: skip
    assert re.search(r"segment:\s+/hls/main/\S+/source/\S+\.m4s\s+\([\d.]+ KiB\)", out.stdout)


WRK_REPORT = """\
Running 1s test @ http://127.0.0.1:1/hls/x.m4s
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  300.00us   5.00ms   90.00%
    Req/Sec     3.50k   100.00     3.60k    80.00%
  Latency Distribution
     50%    2.00ms
     75%    2.20ms
     90%    2.50ms
     99%  850.00us
  3500 requests in 1.00s, 2.30GB read
Requests/sec:   3500.00
Transfer/sec:      2.30GB
"""


def test_wrk_report_is_read_and_errors_fail_the_run() -> None:
    from tidecast.bench.processes import BenchError

    r = parse_wrk(WRK_REPORT)
    assert (r.requests, r.requests_per_s, r.p99_ms) == (3500, 3500.0, 0.85)
    assert r.mb_per_s == pytest.approx(2.30 * 1024)
    with pytest.raises(BenchError, match="non-2xx"):
        parse_wrk(WRK_REPORT.replace("Requests/sec", "  Non-2xx or 3xx responses: 3\nRequests/sec"))
    with pytest.raises(BenchError, match="socket errors"):
        parse_wrk(WRK_REPORT.replace(
            "Requests/sec", "  Socket errors: connect 0, read 2, write 0, timeout 0\nRequests/sec"))  # fmt: skip
