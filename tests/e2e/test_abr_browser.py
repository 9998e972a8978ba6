"""The player on Auto in headless Chromium: it climbs to the top rendition, switches
down when the network is throttled (Chrome DevTools Protocol network emulation)
without a stall longer than 1 s, climbs back up when the throttle is lifted, and
reports what it does in the stats overlay."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import start_server
from tests.e2e.test_abr import publish_file, render

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.heavy]


def current(page: object) -> dict[str, object]:
    return page.evaluate(  # type: ignore[attr-defined, no-any-return]
        """() => { const h = window.tidecastPlayer.hls;
                   return { level: h ? h.currentLevel : -2, top: h ? h.levels.length - 1 : -2,
                            height: h && h.levels[h.currentLevel] ? h.levels[h.currentLevel].height : 0,
                            auto: h ? h.autoLevelEnabled : false,
                            stats: window.tidecastPlayer.stats(),
                            stalls: window.tidecastPlayer.stalls }; }"""
    )


def wait_level(page: object, pred: object, timeout: float, what: str) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        last = current(page)
        if pred(last):  # type: ignore[operator]
            return last
        page.wait_for_timeout(250)  # type: ignore[attr-defined]
    raise AssertionError(f"timed out waiting for {what}; last state {last}")


def test_auto_abr_switches_down_under_throttle_and_back_up(tmp_path: Path) -> None:
    from tests.e2e.browser import chromium_page

    source = render(tmp_path, 854, 480, 100)
    server = start_server(tmp_path / "data", env={"TIDECAST_LADDER": "480:1500,360:800,240:250",
                                                       "TIDECAST_PASSTHROUGH": "0"})
    pub: subprocess.Popen[bytes] | None = None
    try:
        key = server.create_stream("abrweb")
        pub = publish_file(server, key, source)
        with chromium_page() as page:
            page.goto(f"{server.http}/watch/abrweb")
            page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=30_000)
            state = wait_level(page, lambda s: s["level"] == s["top"] and s["top"] >= 2
                               and s["stats"]["bufferS"] >= 3, 40, "the top rendition with a few s of buffer")  # fmt: skip
            assert state["stats"]["latencyS"] >= 4  # type: ignore[index]  # started a safe distance from the edge
            assert state["auto"] is True and state["height"] == 480
            auto_label = page.eval_on_selector("#quality option[value='-1']", "o => o.textContent")
            assert auto_label.startswith("Auto (480p")  # the menu shows the automatic choice
            page.click("#stats-toggle")
            page.wait_for_timeout(700)
            overlay = page.inner_text("#stats")
            assert "rendition  480p" in overlay and "dropped" in overlay and "bandwidth" in overlay

            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            stalls_before = len(state["stalls"])  # type: ignore[arg-type]
            cdp.send("Network.emulateNetworkConditions", {
                "offline": False, "latency": 40, "downloadThroughput": 110_000, "uploadThroughput": 1_000_000,
            })  # ~0.9 Mbit/s: the 480p rendition (1.5 Mbit/s) no longer fits
            down = wait_level(page, lambda s: 0 <= s["level"] < s["top"], 40, "a switch down")
            trace = [down]
            for _ in range(24):  # keep playing on the lower rendition for 6 s
                page.wait_for_timeout(250)
                trace.append(current(page))
            during = trace[-1]
            print("\nthrottle trace:", [(t["level"], t["stats"]["bufferS"], t["stats"]["stalledMs"]) for t in trace])  # type: ignore[index]
            stalls = during["stalls"][stalls_before:]  # type: ignore[index]
            assert all(s["ms"] <= 1000 for s in stalls), f"stalls while throttled: {stalls}"
            assert during["stats"]["stalledMs"] <= 1000  # type: ignore[index]
            assert during["level"] < during["top"], f"went back up while throttled: {during}"

            cdp.send("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
            })
            up = wait_level(page, lambda s: s["level"] == s["top"], 45, "a switch back up")
            stats = up["stats"]
            print(f"\nABR: down to {down['height']}p under throttle, back to {up['height']}p; "
                  f"stalls {up['stalls']}; dropped/decoded {stats['droppedFrames']}/{stats['decodedFrames']}")  # type: ignore[index]
            assert all(s["ms"] <= 1000 for s in up["stalls"])  # type: ignore[union-attr]
    finally:
        if pub is not None and pub.poll() is None:
            pub.kill()
            pub.wait()
        server.stop()
