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


def test_security_settings_from_file_env_and_their_checks(tmp_path: Path) -> None:
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
        ({"tls_cert": "/c.pem"}, "tls_cert and tls_key go together"),
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


def test_security_flags_over_file_and_env(tmp_path: Path) -> None:
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
