"""The ``tidecast`` command line: serve, streams, publish, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tidecast.config import ConfigError, Settings, from_env, from_file
from tidecast.supervise import dump_tasks


def _on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def _settings(args: argparse.Namespace) -> Settings:
    """Defaults, then the config file, then ``TIDECAST_*`` variables, then flags."""
    import os
    from pathlib import Path

    config = getattr(args, "config", None) or os.environ.get("TIDECAST_CONFIG")
    base = from_env(base=from_file(Path(config)) if config else None)
    return base.with_overrides(
        host=getattr(args, "host", None),
        http_port=getattr(args, "http_port", None),
        rtmp_port=getattr(args, "rtmp_port", None),
        data_dir=getattr(args, "data_dir", None),
        public_host=getattr(args, "public_host", None),
        segment_target=getattr(args, "segment_target", None),
        playlist_window=getattr(args, "playlist_window", None),
        reconnect_grace=getattr(args, "reconnect_grace", None),
        ladder=getattr(args, "ladder", None),
        source_rendition=getattr(args, "source_rendition", None),
        passthrough=_on_off(getattr(args, "passthrough", None)),
        workers=getattr(args, "workers", None),
        x264_preset=getattr(args, "preset", None),
        **{name: getattr(args, name, None) for name, *_ in SECURITY_FLAGS},
        playback_secret=getattr(args, "playback_secret", None),
        playback_token_ttl=getattr(args, "playback_token_ttl", None),
        password_attempts=getattr(args, "password_attempts", None),
        key_rotation=getattr(args, "key_rotation", None),
        **{name: getattr(args, name, None) for name, _, _ in _LIMIT_FLAGS},
    )


# settings of the TLS listeners and ingest auth: (setting, type, help); each is also
# TIDECAST_<SETTING> and a config file key
SECURITY_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("rtmps_port", int, "RTMPS port (default 1936; on once --tls-cert is set)"),
    ("https_port", int, "HTTPS port of the origin (default 8443; on once --tls-cert is set)"),
    ("tls_cert", str, "PEM certificate (chain) for RTMPS and HTTPS"),
    ("tls_key", str, "PEM private key (default: in the --tls-cert file)"),
    ("ingest_token_ttl", float, "seconds an API-issued ingest token is valid (default 3600)"),
    ("ingest_token_audience", str, "aud claim every ingest token must carry (default tidecast-ingest)"),
    ("ingest_jwks_url", str, "JWKS URL of an external ingest token issuer"),
    ("ingest_jwks_issuer", str, "iss claim the external issuer's tokens must carry"),
    ("on_publish_url", str, "webhook POSTed before a publish: 2xx allows, anything else refuses"),
    ("on_publish_done_url", str, "webhook POSTed when a publish ends"),
    ("webhook_timeout", float, "seconds a webhook has to answer (default 3)"),
    ("webhook_timeout_rule", str, "allow or deny a publish whose on_publish gets no answer (default deny)"),
    ("ingest_allow", str, "CIDRs that may publish, comma-separated (default: all)"),
    ("ingest_deny", str, "CIDRs that may never publish, comma-separated"),
    ("ingest_max_failures", int, "failed publish attempts from one address that ban it (default 10)"),
    ("ingest_failure_window", float, "... within this many seconds (default 60)"),
    ("ingest_ban_seconds", float, "seconds an address stays banned (default 600; 0 = never ban)"),
    ("rtmp_max_connections", int, "RTMP(S) connections at once (default 512)"),
    ("rtmp_max_connections_per_ip", int, "RTMP(S) connections at once from one address (default 16)"),
    ("rtmp_handshake_timeout", float, "seconds from TCP connect to publish (default 10)"),
)


def _add_security(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("TLS and ingest auth (each also TIDECAST_<NAME> and a config key)")
    for name, kind, text in SECURITY_FLAGS:
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)


# settings of the HTTP listener's protections: (setting, type, help); --name-with-dashes
_LIMIT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("http_max_connections", int, "HTTP connections this node holds at most (default 8192)"),
    ("http_max_per_ip", int, "HTTP connections per client address (default 64; trusted proxies exempt)"),
    ("http_head_timeout", float, "seconds a whole request head may take (default 10)"),
    ("trusted_proxies", str, "comma-separated CIDRs whose X-Forwarded-For is believed (default none)"),
    ("chat_join_timeout", float, "seconds a chat socket has to join (default 5)"),
    ("chat_max_per_ip", int, "open chat sockets per client address (default 20)"),
    ("download_max_per_ip", int, "MP4 downloads in progress per client address (default 2)"),
    ("download_max_total", int, "MP4 downloads in progress on this node (default 8)"),
    ("download_max_builds", int, "MP4 files made at once, one ffmpeg each (default 2)"),
    ("operator_listen", str, "HOST:PORT serving /metrics and /api/v1/transcode without a token"),
)


def _add_limits(p: argparse.ArgumentParser) -> None:
    for name, kind, text in _LIMIT_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                       help=f"{text} (env TIDECAST_{name.upper()})")  # fmt: skip


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="TOML config file: the TIDECAST_* names, lower case (env TIDECAST_CONFIG)"
    )
    p.add_argument(
        "--data-dir",
        type=_path,
        help="data directory (env TIDECAST_DATA_DIR; default ./tidecast-data)",
    )
    p.add_argument(
        "--http-port", type=int, help="HTTP port for printed URLs (env TIDECAST_HTTP_PORT)"
    )
    p.add_argument(
        "--rtmp-port", type=int, help="RTMP port for printed URLs (env TIDECAST_RTMP_PORT)"
    )
    p.add_argument("--host", help="bind address (env TIDECAST_HOST; default 0.0.0.0)")
    p.add_argument("--public-host", help="host name to print in URLs (env TIDECAST_PUBLIC_HOST)")


def _add_playback(p: argparse.ArgumentParser, edge: bool = False) -> None:
    p.add_argument("--playback-secret",
                   help="secret of the playback tokens, shared by origins and the edge "
                        "(env TIDECAST_PLAYBACK_SECRET; default: from the admin token or the data dir)")  # fmt: skip
    if edge:
        return
    p.add_argument("--playback-token-ttl", type=float,
                   help="seconds a token bought with a stream password lasts "
                        "(env TIDECAST_PLAYBACK_TOKEN_TTL; default 21600)")  # fmt: skip
    p.add_argument("--password-attempts", type=int,
                   help="wrong stream passwords per address per minute (env TIDECAST_PASSWORD_ATTEMPTS; default 5)")  # fmt: skip
    p.add_argument("--key-rotation", type=int,
                   help="AES-128 streams: a new key every N segments (env TIDECAST_KEY_ROTATION; default 10)")  # fmt: skip


def _path(text: str) -> object:
    from pathlib import Path

    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidecast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run every role in one process")
    _add_data_dir(serve)
    _add_security(serve)
    serve.add_argument(
        "--segment-target", type=float, help="segment duration target, seconds (default 2)"
    )
    serve.add_argument(
        "--playlist-window", type=int, help="segments in a live playlist (default 6)"
    )
    serve.add_argument(
        "--reconnect-grace", type=float, help="seconds to wait for a publisher to return"
    )
    serve.add_argument(
        "--ladder",
        help='ABR ladder: "default", "none" (source only) or "1080:6000,720:3500,240:400"',
    )
    serve.add_argument("--source-rendition", action="store_true", default=None,
                       help="also offer the untouched source rendition")  # fmt: skip
    serve.add_argument("--passthrough", choices=("on", "off"),
                       help="list a source at the height of its top rung in that rung's place "
                            "instead of encoding it again (default on)")  # fmt: skip
    serve.add_argument(
        "--workers", type=int, help="transcode worker processes (default: one per core)"
    )
    serve.add_argument("--preset", help="x264 preset for the ladder (default veryfast)")
    _add_playback(serve)
    _add_limits(serve)

    role_help = {
        "ingest": "RTMP ingest + segmenter (scale-out role)",
        "worker": "transcode workers on the shared job queue (scale-out role)",
        "packager": "playlists and recordings, one leader per stream (scale-out role)",
        "origin": "HTTP origin: HLS, pages, API, chat over the shared store (scale-out role)",
    }
    for name, text in role_help.items():
        rp = sub.add_parser(name, help=text)
        _add_data_dir(rp)
        if name in ("ingest", "origin"):
            _add_security(rp)
        if name == "origin":
            _add_playback(rp)
            _add_limits(rp)
        if name == "worker":
            rp.add_argument("--workers", type=int, help="worker processes (default: one per core)")

    streams = sub.add_parser("streams", help="manage streams and stream keys")
    ssub = streams.add_subparsers(dest="streams_command", required=True)
    create = ssub.add_parser("create", help="create a stream and print its key and URLs")
    create.add_argument("name")
    create.add_argument("--title", default="")
    _add_data_dir(create)
    lst = ssub.add_parser("list", help="list streams")
    _add_data_dir(lst)
    rot = ssub.add_parser("rotate-key", help="give a stream a new key (the old one stops working)")
    rot.add_argument("name")
    _add_data_dir(rot)

    tls = sub.add_parser("tls-selfsigned", help="write a self-signed certificate and key for a local try")
    tls.add_argument("--out", required=True, help="directory for cert.pem and key.pem")
    tls.add_argument("--host", action="append", dest="names",
                     help="a host name or address the certificate is for (repeat; "
                          "default localhost, 127.0.0.1, ::1)")  # fmt: skip
    tls.add_argument("--days", type=int, default=30, help="days it is valid (default 30)")

    pub = sub.add_parser(
        "publish", help="publish a test pattern with a burnt-in clock to an RTMP URL"
    )
    pub.add_argument("url", help="e.g. rtmp://127.0.0.1:1935/live/<stream-key>")
    pub.add_argument("--duration", type=float, help="seconds (default: until Ctrl-C)")
    pub.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default 1280x720)")
    pub.add_argument("--fps", type=int, default=30)
    pub.add_argument("--gop", type=float, default=2.0, help="keyframe interval, seconds")
    pub.add_argument("--bitrate", type=int, default=2500, help="video kbit/s")
    pub.add_argument("--no-clock", action="store_true", help="no burnt-in wall clock")
    pub.add_argument("--ca-file", default="",
                     help="rtmps://: trust this certificate (e.g. from tidecast tls-selfsigned)")  # fmt: skip
    pub.add_argument("--stamp", action="store_true",
                     help="also a machine-readable wall clock (ms) in a band of black and white "
                          "blocks along the top, for glass-to-glass measurements")  # fmt: skip

    edge = sub.add_parser("edge-config", help="print an nginx caching-edge config for N origins")
    edge.add_argument(
        "--origin", action="append", required=True, help="HOST:PORT of an origin (repeat)"
    )
    edge.add_argument("--listen", default="0.0.0.0:8090")
    edge.add_argument("--cache-dir", default="/var/cache/tidecast-edge")
    edge.add_argument("--cache-size", default="10g")
    edge.add_argument("--segment-target", type=float, default=2.0)
    edge.add_argument("--pid-file", default="/run/tidecast-edge.pid")
    edge.add_argument("--error-log", default="/var/log/tidecast-edge-error.log")
    edge.add_argument("--user", default="www-data", help="user of nginx's worker processes")
    edge.add_argument("--config", help="the deployment's TOML config (its playback_secret, tls_cert, tls_key)")
    edge.add_argument("--data-dir", type=_path,
                      help="data dir whose playback secret to use (when none is configured)")  # fmt: skip
    _add_playback(edge, edge=True)
    edge.add_argument("--tls-cert", help="PEM certificate: adds a TLS + HTTP/2 listener (env TIDECAST_TLS_CERT)")
    edge.add_argument("--tls-key", help="PEM key of --tls-cert (env TIDECAST_TLS_KEY; default: in that file)")
    edge.add_argument("--tls-listen", default="0.0.0.0:443", help="address of the TLS listener")
    edge.add_argument("--max-conns-per-ip", type=int, default=64,
                      help="connections (HTTP/2: requests) one client address may hold")  # fmt: skip

    bench = sub.add_parser("bench", help="benchmarks (figures + a baseline in the same run)")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    lat = bsub.add_parser("latency", help="first frame in -> segment listed at the origin")
    lat.add_argument("--segments", type=int, default=30)
    lat.add_argument("--size", default="1280x720")
    lat.add_argument("--fps", type=int, default=30)
    lat.add_argument("--segment-target", type=float, default=2.0)
    lat.add_argument("--ladder", default="none",
                     help='"none" measures the source rendition; "default" the top transcoded one')  # fmt: skip
    tc = bsub.add_parser("transcode", help="segment pipeline vs one continuous ffmpeg, same ladder")
    tc.add_argument("--seconds", type=float, default=60)
    tc.add_argument("--size", default="1920x1080")
    tc.add_argument("--fps", type=int, default=30)
    tc.add_argument("--workers", type=int, default=0, help="0 = one per core")
    tc.add_argument("--preset", default="veryfast")
    tc.add_argument("--runs", type=int, default=3, help="runs of each side, interleaved")
    tc.add_argument("--ll-hls", choices=("on", "off"), default="on",
                    help="the pipeline's jobs: LL-HLS parts (on) or whole segments (off)")  # fmt: skip
    tc.add_argument("--realtime", action="store_true",
                    help="publish at the source's pace and report part latencies instead")  # fmt: skip
    tc.add_argument("--bframes", action="store_true",
                    help="with --realtime: a source with B-frames (x264 defaults)")  # fmt: skip
    ch = bsub.add_parser("chat", help="one busy chat room vs a bare websockets.broadcast relay")
    ch.add_argument("--clients", type=int, default=2000)
    ch.add_argument("--rate", type=float, default=10, help="messages per second")
    ch.add_argument("--seconds", type=float, default=10)
    gg = bsub.add_parser("g2g", help="glass to glass in Chromium through the nginx edge, LL-HLS and HLS")
    gg.add_argument("--seconds", type=float, default=60, help="measured seconds per configuration")
    gg.add_argument("--warmup", type=float, default=15, help="seconds of playback before measuring")
    gg.add_argument("--configs", default="ll-pass,ll-720,ll-1080,hls-720",
                    help="comma-separated, of ll-pass, ll-720, ll-1080, hls-720 (the baseline)")  # fmt: skip
    gg.add_argument("--sources", help="directory that keeps the rendered sources between runs")
    gg.add_argument("--part-target", type=float, help="LL-HLS part duration, s (default: the server's)")
    og = bsub.add_parser("origin", help="tidecast origin vs nginx, same live segments, wrk")
    og.add_argument("--seconds", type=float, default=10, help="seconds per wrk run")
    og.add_argument("--connections", type=int, default=64, help="wrk connections")
    og.add_argument("--threads", type=int, default=1,
                    help="wrk threads (default 1: one core for wrk, one for the server)")  # fmt: skip
    og.add_argument("--nginx-workers", type=int, default=1,
                    help="nginx worker processes (default 1, as the origin is one process)")  # fmt: skip
    og.add_argument("--media-seconds", type=float, default=14,
                    help="seconds of test pattern published to make the segments")  # fmt: skip
    og.add_argument("--size", default="1280x720", help="test pattern WIDTHxHEIGHT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "serve":
            return _serve(_settings(args))
        if args.command in ("ingest", "worker", "packager", "origin"):
            return _run_role(args.command, _settings(args))
        if args.command == "streams":
            return _streams(args, _settings(args))
        if args.command == "publish":
            return _publish(args)
        if args.command == "tls-selfsigned":
            return _tls_selfsigned(args)
        if args.command == "edge-config":
            return _edge_config(args)
        if args.command == "bench":
            from tidecast.bench import chat, g2g, latency, origin, transcode

            bench = {"latency": latency.main, "transcode": transcode.main, "chat": chat.main,
                     "origin": origin.main, "g2g": g2g.main}[args.bench_command]  # fmt: skip
            return asyncio.run(bench(args))
    except ConfigError as exc:
        print(f"tidecast: {exc}", file=sys.stderr)
        return 2
    return 2


def _edge_config(args: argparse.Namespace) -> int:
    from tidecast.edge.nginx import EdgeConfig, render
    from tidecast.origin.admin import playback_secret

    s = _settings(args)  # --tls-cert/--tls-key/--playback-secret over the config file and env
    try:
        text = render(EdgeConfig(args.origin, args.listen, args.cache_dir, args.cache_size,
                                 args.segment_target, args.pid_file, args.error_log, user=args.user,
                                 playback_secret=playback_secret(s), tls_cert=s.tls_cert,
                                 tls_key=s.tls_key, tls_listen=args.tls_listen,
                                 max_conns_per_ip=args.max_conns_per_ip))  # fmt: skip
    except ValueError as exc:
        print(f"tidecast edge-config: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def own_command(argv0: str | None = None, cwd: str | None = None) -> str:
    """How to run this tidecast again from the same shell: ``tidecast`` when that is
    what PATH finds, else the script's path as typed (``.venv/bin/tidecast`` after the
    README's set-up), else ``python -m tidecast`` with this interpreter."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    here = os.getcwd() if cwd is None else cwd
    if os.path.basename(argv0) == "tidecast":
        found = shutil.which("tidecast")
        full = os.path.abspath(os.path.join(here, argv0))
        if found is not None and os.path.realpath(found) == os.path.realpath(full):
            return "tidecast"
        rel = os.path.relpath(full, here)
        if rel.startswith(".."):
            return full
        return rel if "/" in rel else f"./{rel}"
    return f"{shlex.quote(sys.executable)} -m tidecast"


def _banner(node: object) -> None:
    from tidecast.node import Node

    assert isinstance(node, Node)
    s = node.settings
    out = [
        "",
        "tidecast is running",
        f"  publish (OBS Server):  {s.publish_url()}",
        *([f"  publish over TLS:      {s.publish_url(tls=True)}",
           f"  HTTPS:                 https://{s.url_host}:{node.origin.https_port}/"] if s.tls else []),
        f"  web:                   http://{s.url_host}:{node.http_port}/",
        f"  API:                   http://{s.url_host}:{node.http_port}/api/v1/docs",
        f"  data:                  {s.data_dir.resolve()}",
    ]
    d = node.first_run.default_stream
    if d is not None:
        out += [
            "",
            f"created the default stream {d.stream.name!r}; its key is shown only now:",
            f"  stream key:            {d.key}",
            f"  publish URL:           {s.publish_url(d.key)}",
            f"  watch:                 http://{s.url_host}:{node.http_port}/watch/{d.stream.name}",
            f"  try it:                {own_command()} publish {s.publish_url(d.key)}",
        ]
    else:
        names = ", ".join(x.name for x in node.db.list_streams())
        out += [
            f"  streams:               {names}",
            "  (lost a key? tidecast streams rotate-key NAME)",
        ]
    if node.first_run.admin_token:
        out += ["", "admin API token (kept in the data dir, shown only now):",
                f"  {node.first_run.admin_token}"]  # fmt: skip
    print("\n".join(out) + "\n", flush=True)


def _until_stopped(name: str, make: Callable[[], Any], started: Callable[[Any], None]) -> int:
    """Build and start a node, run until SIGINT/SIGTERM, then close it cleanly."""

    async def run() -> None:
        node = make()
        await node.start()
        started(node)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # what is it doing? kill -USR1 PID
        await stop.wait()
        await node.aclose()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_role(role: str, settings: Settings) -> int:
    from tidecast.roles import ROLES

    return _until_stopped(f"tidecast {role}", lambda: ROLES[role](settings),
                          lambda node: print(f"tidecast {role}: {node.describe()}", flush=True))  # fmt: skip


def _serve(settings: Settings) -> int:
    from tidecast.node import Node

    def started(node: Node) -> None:
        # long-lived start-up objects leave the collector's view, and young
        # collections run less often: fewer pauses under many connections
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        _banner(node)

    return _until_stopped("tidecast", lambda: Node(settings), started)


def _streams(args: argparse.Namespace, settings: Settings) -> int:
    from tidecast.db.repo import InvalidName, NameTaken, StreamNotFound
    from tidecast.roles import open_database

    db = open_database(settings)
    try:
        if args.streams_command == "create":
            try:
                new = db.create_stream(args.name, args.title)
            except (InvalidName, NameTaken) as exc:
                print(f"tidecast: {exc}", file=sys.stderr)
                return 1
            print(f"stream:       {new.stream.name}")
            print(f"stream key:   {new.key}   (shown only now)")
            print(f"OBS server:   {settings.publish_url()}")
            print(f"publish URL:  {settings.publish_url(new.key)}")
            print(f"watch:        {settings.watch_url(new.stream.name)}")
            print(f"HLS:          {settings.hls_url(new.stream.name)}")
            return 0
        if args.streams_command == "list":
            rows = db.list_streams()
            if not rows:
                print("no streams yet: tidecast streams create NAME")
            for r in rows:
                print(
                    f"{r.name:<24} {settings.watch_url(r.name)}  created {r.created_at:%Y-%m-%d %H:%M}"
                )
            return 0
        if args.streams_command == "rotate-key":
            try:
                key = db.rotate_key(args.name)
            except StreamNotFound:
                print(f"tidecast: no stream named {args.name!r}", file=sys.stderr)
                return 1
            print(f"new stream key: {key}")
            print(f"publish URL:    {settings.publish_url(key)}")
            return 0
    finally:
        db.close()
    return 2


def _tls_selfsigned(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tidecast.tls import DEFAULT_NAMES, make_self_signed

    names = args.names or list(DEFAULT_NAMES)
    try:
        cert, key = make_self_signed(Path(args.out), names, args.days)
    except (ValueError, OSError) as exc:
        print(f"tidecast: {exc}", file=sys.stderr)
        return 1
    print(f"certificate: {cert}   (self-signed, for {', '.join(names)}, {args.days} days)")
    print(f"key:         {key}   (mode 0600)")
    print(f"use it:      tidecast serve --tls-cert {shlex.quote(str(cert))} --tls-key {shlex.quote(str(key))}")
    print(f"publish:     tidecast publish --ca-file {shlex.quote(str(cert))} rtmps://HOST:1936/live/KEY "
          "(other encoders: trust this file, or turn certificate verification off)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from tidecast import ffmpeg

    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        print(f"tidecast: --size must be WIDTHxHEIGHT, got {args.size!r}", file=sys.stderr)
        return 2
    if not args.url.startswith(("rtmp://", "rtmps://")):
        print("tidecast: the URL must start with rtmp:// (e.g. rtmp://127.0.0.1:1935/live/KEY)",
              file=sys.stderr)  # fmt: skip
        return 2
    pattern = ffmpeg.TestPattern(
        width=w, height=h, fps=args.fps, gop_seconds=args.gop, video_bitrate_k=args.bitrate,
        duration=args.duration, clock=not args.no_clock, font=ffmpeg.clock_font(),
        stamp="wall" if args.stamp else "",
    )  # fmt: skip
    cmd = ffmpeg.publish_test_pattern_args(pattern, args.url, ffmpeg.ffmpeg_exe(), ca_file=args.ca_file)

    async def run() -> int:
        proc = await ffmpeg.spawn(cmd, "publish")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"publishing a {w}x{h}@{args.fps} test pattern to {args.url} (Ctrl-C stops)", flush=True
        )
        waiter = asyncio.create_task(proc.proc.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        rc = await proc.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        if rc not in (0, 255) and not stop.is_set():
            tail = "\n".join(proc.stderr_tail[-5:])
            print(f"tidecast: ffmpeg exited with {rc}\n{tail}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(run())
