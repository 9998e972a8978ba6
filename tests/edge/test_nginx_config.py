from __future__ import annotations

import pytest

from tidecast.edge.nginx import EdgeConfig, render


def test_config_has_the_caching_and_failover_rules() -> None:
    text = render(EdgeConfig(origins=["10.0.0.1:8080", "10.0.0.2:8080"], segment_target=4))
    assert "server 10.0.0.1:8080 max_fails=1 fail_timeout=5s;" in text
    assert "server 10.0.0.2:8080 max_fails=1 fail_timeout=5s;" in text
    assert "proxy_cache_lock on;" in text  # request collapsing
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in text  # failover
    assert "proxy_cache_valid 200 2s;" in text  # playlists: half a 4 s segment
    assert "proxy_cache_valid 200 206 1d;" in text  # segments
    assert "X-Cache-Status" in text and "user www-data;" in text


def test_needs_an_origin() -> None:
    with pytest.raises(ValueError):
        render(EdgeConfig(origins=[]))
