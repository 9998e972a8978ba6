"""One config file for every role: TOML, the TIDECAST_* names in lower case."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidecast.config import ConfigError, Settings, from_env, from_file
from tidecast.store.factory import open_store, store_url_of
from tidecast.store.local import LocalStore
from tidecast.store.s3 import S3Store


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text('bus_url = "nats://10.0.0.5:4222"\nworkers = 3\nsource_rendition = true\n'
                    'lease_ttl = 5\nstore_url = "s3://media/live?endpoint=http://127.0.0.1:9000"\n')  # fmt: skip
    s = from_file(conf)
    assert s.bus_url == "nats://10.0.0.5:4222" and s.workers == 3 and s.source_rendition and s.lease_ttl == 5.0
    s = from_env({"TIDECAST_WORKERS": "2"}, base=s)
    assert s.workers == 2 and s.bus_url == "nats://10.0.0.5:4222"
    assert s.with_overrides(workers=1).workers == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bus_ulr = 'nats://x'", r"unknown setting\(s\) bus_ulr"),
        ("workers = 'many'", "workers"),
        ("workers = [1]", "plain value"),
        ("bus_url = 'http://x'", "nats://"),
        ("store_url = 'ftp://x'", "store URL"),
        ("store_url = 's3:///nobucket'", "name a bucket"),
        ("store_url = 's3://b/p?endpoint=http://x&colour=red'", "colour"),
        ("lease_ttl = 0.1", "lease_ttl"),
        ("part_target = 0.05", "part_target must be 0.1..1.0"),
        ("segment_target = 0.5\npart_target = 0.3", "at most half of segment_target"),
        ("part_target = 'third'", "part_target"),
        ("workers = 3\n[section]\nx = 1", "section"),
        ("= broken", "t.toml"),
    ],
)
def test_bad_config_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        from_file(conf)


def test_low_latency_settings(tmp_path: Path) -> None:
    assert not Settings().ll_hls and Settings().part_target == pytest.approx(1 / 3)
    for bad in (0.05, 1.5):
        with pytest.raises(ConfigError, match="part_target"):
            Settings(part_target=bad)
    with pytest.raises(ConfigError, match="at most half of segment_target"):
        Settings(segment_target=1.0, part_target=0.6)
    assert Settings(segment_target=1.0, part_target=0.5).part_target == 0.5
    conf = tmp_path / "t.toml"
    conf.write_text("ll_hls = false\npart_target = 0.5\n")
    s = from_file(conf)
    assert not s.ll_hls and s.part_target == 0.5
    s = from_env({"TIDECAST_LL_HLS": "yes", "TIDECAST_PART_TARGET": "0.25"}, base=s)
    assert s.ll_hls and s.part_target == 0.25
    with pytest.raises(ConfigError, match="TIDECAST_PART_TARGET"):
        from_env({"TIDECAST_PART_TARGET": "soon"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        from_file(tmp_path / "nope.toml")


def test_store_urls_round_trip(tmp_path: Path) -> None:
    local = open_store("", tmp_path / "media")
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "media").resolve()
    again = open_store(store_url_of(local), tmp_path / "elsewhere")
    assert isinstance(again, LocalStore) and again.root == local.root
    s3 = open_store("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1", tmp_path)
    assert isinstance(s3, S3Store) and s3.bucket == "bucket" and s3.prefix == "some/prefix/"
    back = open_store(store_url_of(s3), tmp_path)
    assert isinstance(back, S3Store) and (back.bucket, back.prefix, back.endpoint_url, back.region) == (
        "bucket", "some/prefix/", "http://127.0.0.1:9000", "eu-west-1")  # fmt: skip
    assert Settings().store_url == ""


def test_roles_refuse_to_start_without_what_they_need(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text('workers = "x"\n')
    out = subprocess.run([sys.executable, "-m", "tidecast", "worker", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "workers = 'x'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "tidecast", "packager", "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "needs a bus" in out.stderr


def test_the_banner_names_a_command_that_runs_as_shown(tmp_path: Path) -> None:
    """After the README's set-up the CLI is .venv/bin/tidecast, not on PATH: the banner's
    'try it' line must say so; python -m tidecast gets this interpreter."""
    import sys

    from tidecast.cli import own_command

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "tidecast").write_text("#!/bin/sh\n")
    assert own_command(".venv/bin/tidecast", str(tmp_path)) == ".venv/bin/tidecast"
    assert own_command(str(venv_bin / "tidecast"), str(tmp_path / "elsewhere")) == str(venv_bin / "tidecast")
    assert own_command("/some/path/__main__.py", str(tmp_path)) == f"{sys.executable} -m tidecast"


def test_security_settings_from_file_env_and_flags(tmp_path: Path) -> None:
    from tidecast.cli import SECURITY_FLAGS, _settings, build_parser

    s = Settings()
    assert (s.rtmps_port, s.https_port, s.tls) == (1936, 8443, False)  # off until a certificate
    assert s.webhook_timeout_rule == "deny" and s.rtmp_max_connections_per_ip == 16
    conf = tmp_path / "t.toml"
    conf.write_text('tls_cert = "/etc/tidecast/cert.pem"\nrtmps_port = 2936\ningest_deny = "10.0.0.0/8"\n'
                    'on_publish_url = "http://hooks:9000/p"\nwebhook_timeout_rule = "allow"\n'
                    'ingest_max_failures = 5\n')  # fmt: skip
    s = from_file(conf)
    assert s.tls and s.rtmps_port == 2936 and s.ingest_deny == "10.0.0.0/8"
    assert s.webhook_timeout_rule == "allow" and s.ingest_max_failures == 5
    assert s.publish_url(tls=True) == "rtmps://127.0.0.1:2936/live"
    s = from_env({"TIDECAST_HTTPS_PORT": "9443", "TIDECAST_TLS_KEY": "/k.pem",
                  "TIDECAST_INGEST_JWKS_URL": "https://idp/jwks.json"}, base=s)  # fmt: skip
    assert s.https_port == 9443 and s.tls_key == "/k.pem" and s.ingest_jwks_url.endswith("jwks.json")
    # every security setting has a flag on serve, and the flag wins
    args = build_parser().parse_args(["serve", "--rtmps-port", "3936", "--tls-cert", "/c.pem",
                                      "--ingest-allow", "192.0.2.0/24", "--rtmp-max-connections-per-ip", "4"])  # fmt: skip
    s = _settings(args)
    assert (s.rtmps_port, s.tls_cert, s.ingest_allow, s.rtmp_max_connections_per_ip) == (3936, "/c.pem", "192.0.2.0/24", 4)
    from tidecast.config import _ENV_FIELDS

    assert {name for name, *_ in SECURITY_FLAGS} <= set(_ENV_FIELDS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_key = '/k.pem'", "tls_key is set but tls_cert is not"),
        ("rtmps_port = 70000", "rtmps_port must be between"),
        ("ingest_deny = '10.0.0.1/8'", "ingest_deny: not an address or CIDR"),
        ("ingest_allow = 'example.com'", "ingest_allow"),
        ("webhook_timeout_rule = 'maybe'", "allow or deny"),
        ("on_publish_url = 'ftp://x'", "http:// or https://"),
        ("on_publish_url = 'http://x'\nwebhook_timeout = 20", "shorter than rtmp_handshake_timeout"),
        ("ingest_token_ttl = 5", "ingest_token_ttl"),
        ("rtmp_max_connections = 10\nrtmp_max_connections_per_ip = 20", "rtmp_max_connections_per_ip"),
    ],
)
def test_bad_security_settings_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        from_file(conf)


def test_tls_files_are_checked_with_a_clear_error(tmp_path: Path) -> None:
    from tidecast.tls import make_self_signed, server_context

    with pytest.raises(ConfigError, match="is not a file"):
        server_context(Settings(tls_cert=str(tmp_path / "missing.pem")))
    cert, key = make_self_signed(tmp_path / "a")
    other_cert, _ = make_self_signed(tmp_path / "b")
    assert server_context(Settings(tls_cert=str(cert), tls_key=str(key))) is not None
    assert (key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        server_context(Settings(tls_cert=str(other_cert), tls_key=str(key)))  # not its key
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert server_context(Settings(tls_cert=str(both))) is not None  # key in the cert file


def test_playback_settings_from_file_env_and_flags(tmp_path: Path) -> None:
    from tidecast.cli import _settings, build_parser

    s = Settings()
    assert (s.playback_secret, s.playback_token_ttl, s.password_attempts, s.key_rotation) == ("", 21600.0, 5, 10)
    conf = tmp_path / "t.toml"
    conf.write_text('playback_secret = "file-secret-0123456789"\nplayback_token_ttl = 600\n'
                    "password_attempts = 3\nkey_rotation = 4\n")  # fmt: skip
    s = from_file(conf)
    assert (s.playback_secret, s.playback_token_ttl, s.password_attempts, s.key_rotation) == (
        "file-secret-0123456789", 600.0, 3, 4)  # fmt: skip
    s = from_env({"TIDECAST_PLAYBACK_SECRET": "env-secret-0123456789", "TIDECAST_KEY_ROTATION": "6",
                  "TIDECAST_PLAYBACK_TOKEN_TTL": "120", "TIDECAST_PASSWORD_ATTEMPTS": "9"}, base=s)  # fmt: skip
    assert (s.playback_secret, s.key_rotation, s.playback_token_ttl, s.password_attempts) == (
        "env-secret-0123456789", 6, 120.0, 9)  # fmt: skip
    args = build_parser().parse_args(["serve", "--playback-secret", "flag-secret-0123456789", "--key-rotation", "3",
                                      "--playback-token-ttl", "90", "--password-attempts", "2"])  # fmt: skip
    s = _settings(args)
    assert (s.playback_secret, s.key_rotation, s.playback_token_ttl, s.password_attempts) == (
        "flag-secret-0123456789", 3, 90.0, 2)  # fmt: skip
    for bad, match in (({"playback_secret": "short"}, "playback_secret"), ({"key_rotation": 0}, "key_rotation"),
                       ({"playback_token_ttl": 5}, "playback_token_ttl"),
                       ({"password_attempts": 0}, "password_attempts"),
                       ({"playback_secret": 'has "quotes" and spaces'}, "playback_secret")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            Settings(**bad)  # type: ignore[arg-type]


def test_edge_config_carries_the_origins_playback_secret(tmp_path: Path) -> None:
    import contextlib
    import io

    from tidecast.cli import main
    from tidecast.origin.admin import playback_secret

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["edge-config", "--origin", "127.0.0.1:8080", "--data-dir", str(tmp_path)]) == 0
    secret = playback_secret(Settings(data_dir=tmp_path))  # what an origin on this data dir uses
    assert f'secure_link_md5 "$tc_expires/hls/$tc_stream/ {secret}";' in out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["edge-config", "--origin", "o:1", "--playback-secret", "given-secret-0123456789"]) == 0
    assert "given-secret-0123456789" in out.getvalue()


def test_limit_settings_from_file_env_and_their_checks(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text('tls_cert = "/etc/c.pem"\ntls_key = "/etc/k.pem"\ntrusted_proxies = "10.0.0.0/8, ::1"\n'
                    'http_max_per_ip = 10\nhttp_head_timeout = 3\nchat_join_timeout = 2\nchat_max_per_ip = 7\n'
                    'download_max_per_ip = 1\ndownload_max_total = 4\ndownload_max_builds = 1\n'
                    'operator_listen = "127.0.0.1:9100"\nhttp_max_connections = 100\n')  # fmt: skip
    s = from_file(conf)
    assert (s.tls_cert, s.tls_key, s.trusted_proxies) == ("/etc/c.pem", "/etc/k.pem", "10.0.0.0/8, ::1")
    assert (s.http_max_connections, s.http_max_per_ip, s.http_head_timeout) == (100, 10, 3.0)
    assert (s.chat_join_timeout, s.chat_max_per_ip) == (2.0, 7)
    assert (s.download_max_per_ip, s.download_max_total, s.download_max_builds) == (1, 4, 1)
    assert s.operator_listen == "127.0.0.1:9100"
    env = {"TIDECAST_TLS_CERT": "/x/c.pem", "TIDECAST_TLS_KEY": "/x/k.pem", "TIDECAST_HTTP_MAX_PER_IP": "20",
           "TIDECAST_TRUSTED_PROXIES": "192.0.2.1", "TIDECAST_OPERATOR_LISTEN": "[::1]:9101",
           "TIDECAST_CHAT_JOIN_TIMEOUT": "4", "TIDECAST_DOWNLOAD_MAX_TOTAL": "9"}  # fmt: skip
    s = from_env(env, base=s)
    assert (s.tls_cert, s.http_max_per_ip, s.trusted_proxies, s.operator_listen) == (
        "/x/c.pem", 20, "192.0.2.1", "[::1]:9101")  # fmt: skip
    assert s.chat_join_timeout == 4.0 and s.download_max_total == 9
    d = Settings()
    assert d.tls_cert == "" and d.trusted_proxies == "" and d.operator_listen == ""
    for bad, message in [
        ({"tls_key": "/k.pem"}, "tls_key is set but tls_cert is not"),
        ({"trusted_proxies": "10.0.0.0/99"}, "trusted_proxies"),
        ({"operator_listen": "9100"}, "HOST:PORT"),
        ({"http_max_per_ip": 0}, "http_max_per_ip"),
        ({"http_max_per_ip": 10, "http_max_connections": 5}, "http_max_per_ip"),
        ({"http_head_timeout": 0}, "http_head_timeout"),
        ({"chat_max_per_ip": 0}, "chat_max_per_ip"),
        ({"download_max_per_ip": 5, "download_max_total": 2}, "download_max_per_ip"),
        ({"download_max_builds": 0}, "download_max_builds"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Settings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="TIDECAST_HTTP_MAX_PER_IP"):
        from_env({"TIDECAST_HTTP_MAX_PER_IP": "lots"})


def test_limit_flags_over_file_and_env(tmp_path: Path) -> None:
    from tidecast.cli import _settings, build_parser

    conf = tmp_path / "t.toml"
    conf.write_text("http_max_per_ip = 10\nchat_max_per_ip = 3\n")
    args = build_parser().parse_args(["origin", "--config", str(conf), "--http-max-per-ip", "12",
                                      "--trusted-proxies", "10.0.0.0/8", "--operator-listen", "127.0.0.1:9100",
                                      "--download-max-builds", "1", "--http-head-timeout", "4"])  # fmt: skip
    s = _settings(args)
    assert (s.http_max_per_ip, s.chat_max_per_ip, s.trusted_proxies) == (12, 3, "10.0.0.0/8")
    assert (s.operator_listen, s.download_max_builds, s.http_head_timeout) == ("127.0.0.1:9100", 1, 4.0)
    assert _settings(build_parser().parse_args(["serve", "--chat-join-timeout", "2"])).chat_join_timeout == 2.0
