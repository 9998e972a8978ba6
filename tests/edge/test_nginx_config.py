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


def test_ll_hls_rules_wait_longer_than_the_origin_holds() -> None:
    import re

    from tidecast.origin.blocking import max_hold

    for target in (1.0, 2.0, 4.0):
        text = render(EdgeConfig(origins=["10.0.0.1:8080"], segment_target=target))
        blocking = text.split("location @blocking {", 1)[1].split("}", 1)[0]
        parts = text.split('location ~ "/\\d{6,}\\.\\d+\\.m4s$" {', 1)[1].split("}", 1)[0]
        for block in (blocking, parts):
            for directive in ("proxy_cache_lock_timeout", "proxy_cache_lock_age", "proxy_read_timeout"):
                m = re.search(directive + r" (\d+)s;", block)
                assert m is not None and int(m.group(1)) > max_hold(target), (target, directive)
            # a hold that ended is not held again at the next origin
            assert "proxy_next_upstream error timeout http_502 http_504;" in block
        # every request is cached under its query too (and its token scope, see below)
        assert 'proxy_cache_key "$tc_scope|$scheme$proxy_host$tc_object$is_args$args";' in text
        assert "proxy_cache_valid 503 1s;" in blocking
        assert "proxy_cache_valid 200 206 1d;" in parts and "404" not in parts  # parts: never a kept 404
    assert 'if ($arg__HLS_msn != "") { return 418; }' in text and "error_page 418 = @blocking;" in text
    # the part location comes before the segments' (nginx takes the first regex that matches)
    assert text.index('location ~ "/\\d{6,}') < text.index("location ~ \\.(m4s|mp4|jpg)$")


def test_playback_tokens_are_checked_before_the_cache() -> None:
    text = render(EdgeConfig(origins=["10.0.0.1:8080"], playback_secret="shared-secret-0123456789"))
    assert "secure_link $tc_hash,$tc_expires;" in text
    assert 'secure_link_md5 "$tc_expires/hls/$tc_stream/ shared-secret-0123456789";' in text
    assert "if ($tc_path_refused) { return 403; }" in text
    key_block = text.split("location ~ \\.key$ {", 1)[1].split("}", 1)[0]
    assert "proxy_cache off;" in key_block  # keys are never cached
    for block in text.split("location ")[1:]:
        if "proxy_cache_valid 200 206 1d;" in block:  # segments and parts: origin's "private" ignored
            assert "proxy_ignore_headers Cache-Control Expires;" in block
    # without a secret, a request with a token is never answered from (or kept in) the cache
    bare = render(EdgeConfig(origins=["10.0.0.1:8080"]))
    assert "secure_link" not in bare and "default bypass;" in bare and "proxy_no_cache $tc_bypass;" in bare
    with pytest.raises(ValueError, match="playback secret"):
        render(EdgeConfig(origins=["10.0.0.1:8080"], playback_secret='bad" secret'))


def test_tls_listener_http2_and_forwarded_headers() -> None:
    plain = render(EdgeConfig(origins=["10.0.0.1:8080"]))
    assert "ssl" not in plain and "X-Forwarded-For $proxy_add_x_forwarded_for" in plain
    text = render(EdgeConfig(origins=["10.0.0.1:8080"], tls_cert="/etc/t/cert.pem", tls_key="/etc/t/key.pem",
                             tls_listen="0.0.0.0:8443", max_conns_per_ip=20))  # fmt: skip
    assert "listen 0.0.0.0:8443 ssl http2;" in text and "listen 0.0.0.0:8090;" in text
    assert "ssl_certificate /etc/t/cert.pem;" in text and "ssl_certificate_key /etc/t/key.pem;" in text
    assert "limit_conn tidecast_perip 20;" in text and "client_header_timeout 10s;" in text
    # a location with proxy_set_header of its own inherits none: it must repeat them
    last = text.split("location / {", 1)[1]
    assert "X-Forwarded-For $proxy_add_x_forwarded_for;" in last and "proxy_set_header Host $http_host;" in last
    # the key may be in the certificate file; a key without a certificate is refused
    one = render(EdgeConfig(origins=["o:1"], tls_cert="/c.pem"))
    assert "ssl_certificate /c.pem;" in one and "ssl_certificate_key /c.pem;" in one
    with pytest.raises(ValueError, match="tls_cert is not"):
        render(EdgeConfig(origins=["o:1"], tls_key="/k.pem"))
    with pytest.raises(ValueError, match="unusable"):
        render(EdgeConfig(origins=["o:1"], tls_cert="/c.pem; evil", tls_key="/k.pem"))


def test_edge_config_cli_takes_tls_from_settings(tmp_path: object) -> None:
    import subprocess
    import sys

    env = {"TIDECAST_TLS_CERT": "/srv/c.pem", "TIDECAST_TLS_KEY": "/srv/k.pem", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "tidecast", "edge-config", "--origin", "127.0.0.1:8080",
                          "--tls-listen", "127.0.0.1:8443"], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ssl_certificate /srv/c.pem;" in out.stdout and "listen 127.0.0.1:8443 ssl http2;" in out.stdout
    out = subprocess.run([sys.executable, "-m", "tidecast", "edge-config", "--origin", "o:1", "--tls-key", "/k.pem"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "tls_key is set but tls_cert is not" in out.stderr
