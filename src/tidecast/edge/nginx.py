"""``tidecast edge-config``: an nginx pull-through caching edge in front of N origins.

- Live playlists are cached for a fraction of a segment (they change every
  segment), VOD/ended playlists a little longer; segments and init segments,
  which never change, for a day.
- ``proxy_cache_lock`` collapses concurrent misses for one object into a single
  origin request; ``proxy_cache_use_stale updating`` serves the previous
  playlist while one request refreshes it.
- ``proxy_next_upstream`` moves a request to the next origin on errors and
  timeouts, so a stopped origin costs nothing but a retry.
- ``X-Cache-Status`` tells HIT/MISS/EXPIRED for debugging and tests.

TLS and clients:

- With a certificate (``tls_cert``/``tls_key``, PEM files; the key may be in the
  certificate file) the edge also listens on ``tls_listen`` (443) with TLS 1.2/1.3
  and HTTP/2, next to the plain listener.
  (``listen ... ssl http2`` is the form Debian 12's nginx 1.22 knows; nginx 1.25.1+
  warns about it and still accepts it.)
- Every request to an origin carries ``X-Forwarded-For`` (the client's address
  appended) and ``X-Forwarded-Proto``; origins believe it only from addresses in
  their ``trusted_proxies``, so list the edge there.
- A client address may hold ``max_conns_per_ip`` connections (HTTP/2: requests
  in flight) and has ``header_timeout`` seconds to send a request head.

LL-HLS (RFC 8216bis 6.2.5.2, 6.2.6):

- A blocking playlist request (``_HLS_msn``) goes to its own location: cached
  under its full query string, for the same short time as a live playlist (the
  answer holds what was asked for, and stays a right answer). nginx sends no
  ``Age`` header of its own, so a player that corrects for a cached playlist's
  age (hls.js: RFC 8216bis Appendix C, "CDN tune-in") takes what it gets for
  fresh: keeping blocking answers only that long bounds what it can be behind
  by. Collapsing (``proxy_cache_lock``) waits longer than the origin's longest
  hold, and so does the read timeout, so a crowd waiting for the next part costs
  the origin one request. A 503 (the origin's hold ended) is kept a second, so
  the crowd behind the lock gets it too instead of each asking again; it is not
  retried on the next origin (that would only hold it again).
- Parts are immutable once they exist, like segments; a 404 for a part is never
  cached (a part is asked for the moment it is hinted, just before it exists),
  and the hinted part waits at the origin as long as a blocking playlist may.
- nginx's cache lock lets a waiting request look again every 500 ms, so a
  request collapsed behind another gets its answer up to half a second after
  the first (measured in ``tests/edge/test_edge_ll.py``).

Playback tokens (``tidecast.access.tokens``), checked here without the origin,
before the cache:

- the token comes from the path (``/hls/<stream>/~<token>/...``) or the
  ``tidecast_play`` cookie, and ``secure_link_md5`` checks it against the
  stream in the path and the shared secret. A path token that is not valid is
  refused (403) at once; a cookie that is not valid counts as none.
- every cache key starts with a scope: ``token`` for a request with a valid
  token, ``public`` for one without. A ``public`` entry exists only because the
  origin served that object to a request without a token, i.e. the stream was
  public; so a request without a token never gets a protected stream's object
  from the cache, and one with a valid token gets only objects of its stream
  (the key holds the path without the token, so all holders share one entry).
  A stream made private keeps what was cached of it in the ``public`` scope
  until that expires (segments: a day) — purge the cache to end it at once.
- the origin sends a protected stream's objects ``Cache-Control: private``; the
  edge ignores that header (it caches by its own rules) and passes it on.
- AES-128 keys (``*.key``) are never cached: passed through to the origin,
  which checks the token itself and answers ``private, no-store``.
- without a secret (``playback_secret`` empty) a request with a token goes to
  the origin uncached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidecast.origin.blocking import max_hold

HOLD_MARGIN = 4  # seconds the edge waits past the origin's longest hold


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    origins: Sequence[str]  # host:port of each origin
    listen: str = "0.0.0.0:8090"
    cache_dir: str = "/var/cache/tidecast-edge"
    cache_size: str = "10g"
    segment_target: float = 2.0
    pid_file: str = "/run/tidecast-edge.pid"
    error_log: str = "/var/log/tidecast-edge-error.log"
    worker_processes: str = "auto"
    user: str = "www-data"  # the worker processes' user: it must own cache_dir
    playback_secret: str = ""  # the origins' (``origin.admin.playback_secret``)
    tls_cert: str = ""  # PEM certificate (chain): a TLS + HTTP/2 listener
    tls_key: str = ""  # PEM key; empty = in tls_cert
    tls_listen: str = "0.0.0.0:443"
    max_conns_per_ip: int = 64
    header_timeout: int = 10  # seconds


def render(cfg: EdgeConfig) -> str:
    if not cfg.origins:
        raise ValueError("an edge needs at least one origin")
    if cfg.tls_key and not cfg.tls_cert:
        raise ValueError("tls_key is set but tls_cert is not: a TLS edge needs the certificate")
    tls_key = cfg.tls_key or cfg.tls_cert  # the key may be in the certificate file
    for path in (cfg.tls_cert, tls_key):
        if any(c in path for c in ';{}"\'\n') or path != path.strip():
            raise ValueError(f"unusable file name for nginx: {path!r}")
    tls = (
        f"""
        listen {cfg.tls_listen} ssl http2;
        ssl_certificate {cfg.tls_cert};
        ssl_certificate_key {tls_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tidecast_tls:10m;
        ssl_session_timeout 1h;"""
        if cfg.tls_cert
        else ""
    )
    forwarded = """proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;"""
    live_s = max(1, int(cfg.segment_target / 2))  # about half a segment (nginx counts in seconds)
    wait_s = int(max_hold(cfg.segment_target)) + HOLD_MARGIN  # past the longest origin hold
    servers = "\n".join(f"        server {o} max_fails=1 fail_timeout=5s;" for o in cfg.origins)
    tokens = _token_maps(cfg.playback_secret)
    return f"""# generated by `tidecast edge-config`: a caching edge in front of tidecast origins
user {cfg.user};
worker_processes {cfg.worker_processes};
pid {cfg.pid_file};
error_log {cfg.error_log} warn;
events {{ worker_connections 4096; }}

http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_header_timeout {cfg.header_timeout}s;
    limit_conn_zone $binary_remote_addr zone=tidecast_perip:10m;
    limit_conn_status 429;

    proxy_cache_path {cfg.cache_dir} levels=1:2 keys_zone=tidecast:64m max_size={cfg.cache_size}
                     inactive=1d use_temp_path=off;

{tokens}
    upstream tidecast_origins {{
{servers}
        keepalive 64;
    }}

    server {{
        listen {cfg.listen};{tls}
        limit_conn tidecast_perip {cfg.max_conns_per_ip};

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        {forwarded}
        proxy_connect_timeout 2s;
        proxy_read_timeout 10s;
        proxy_next_upstream error timeout http_502 http_503 http_504;
        proxy_next_upstream_tries 3;
        proxy_cache tidecast;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 5s;
        proxy_cache_use_stale error timeout updating http_502 http_503 http_504;
        proxy_cache_background_update on;
        add_header X-Cache-Status $upstream_cache_status always;
        proxy_cache_key "$tc_scope|$scheme$proxy_host$tc_object$is_args$args";
        proxy_cache_bypass $tc_bypass;
        proxy_no_cache $tc_bypass;
{_secure_link(cfg.playback_secret)}
        # a token in the path that is forged, expired or another stream's: refused here
        if ($tc_path_refused) {{ return 403; }}

        # AES-128 keys: never cached; the origin checks the token and says no-store
        location ~ \\.key$ {{
            proxy_pass http://tidecast_origins;
            proxy_cache off;
        }}

        # live playlists: they change every segment
        location ~ \\.m3u8$ {{
            error_page 418 = @blocking;
            if ($arg__HLS_msn != "") {{ return 418; }}
            proxy_pass http://tidecast_origins;
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 {live_s}s;
            proxy_cache_valid 404 {live_s}s;
        }}

        # LL-HLS blocking playlist reload: held at the origin until the playlist has it
        location @blocking {{
            proxy_pass http://tidecast_origins;
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 {live_s}s;
            proxy_cache_valid 503 1s;
            proxy_cache_lock_timeout {wait_s}s;
            proxy_cache_lock_age {wait_s}s;
            proxy_read_timeout {wait_s}s;
            proxy_next_upstream error timeout http_502 http_504;
        }}

        # LL-HLS parts: immutable once they exist; the hinted one waits at the origin
        location ~ "/\\d{{6,}}\\.\\d+\\.m4s$" {{
            proxy_pass http://tidecast_origins;
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 206 1d;
            proxy_cache_lock_timeout {wait_s}s;
            proxy_cache_lock_age {wait_s}s;
            proxy_read_timeout {wait_s}s;
            proxy_next_upstream error timeout http_502 http_504;
        }}

        # segments, init segments, posters: immutable
        location ~ \\.(m4s|mp4|jpg)$ {{
            proxy_pass http://tidecast_origins;
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 206 1d;
            proxy_cache_valid 404 1s;
        }}

        # pages, API, chat WebSockets: not cached
        location / {{
            proxy_pass http://tidecast_origins;
            proxy_cache off;
            # proxy_set_header here replaces the server's: all of them again
            proxy_set_header Host $http_host;
            {forwarded.replace("        ", "            ")}
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $http_connection;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def _token_maps(secret: str) -> str:
    """The maps that find a request's playback token, its scope and its cache path."""
    if secret:
        scope = """    map "$tc_token:$secure_link" $tc_scope {
        "~^:" public;
        "~:1$" token;
        default public;
    }
    map "$tc_path_token:$secure_link" $tc_path_refused {
        "~^:" 0;
        "~:1$" 0;
        default 1;
    }"""
    else:
        scope = """    map $tc_token $tc_scope {
        "" public;
        default bypass;
    }
    map $tc_path_token $tc_path_refused {
        default 0;
    }"""
    return f"""    # playback tokens: /hls/<stream>/~<expires>.<hash>/... or the tidecast_play cookie
    map $uri $tc_stream {{
        "~^/hls/(?<tc_s>[a-z0-9][a-z0-9_-]*)/" $tc_s;
        default "";
    }}
    map $uri $tc_path_token {{
        "~^/hls/[^/]+/~(?<tc_t>[^/]+)/" $tc_t;
        default "";
    }}
    map $uri $tc_object {{
        "~^/hls/(?<tc_s2>[^/]+)/~[^/]+/(?<tc_rest>.*)$" /hls/$tc_s2/$tc_rest;
        default $uri;
    }}
    map $tc_path_token $tc_token {{
        "" $cookie_tidecast_play;
        default $tc_path_token;
    }}
    map $tc_token $tc_expires {{
        "~^(?<tc_e>[0-9]{{1,12}})[.][A-Za-z0-9_-]{{22}}$" $tc_e;
        default "";
    }}
    map $tc_token $tc_hash {{
        "~^[0-9]{{1,12}}[.](?<tc_h>[A-Za-z0-9_-]{{22}})$" $tc_h;
        default "";
    }}
{scope}
    map $tc_scope $tc_bypass {{
        bypass 1;
        default 0;
    }}
"""


def _secure_link(secret: str) -> str:
    if not secret:
        return ""
    if not all(c.isalnum() or c in "._-" for c in secret):
        raise ValueError("the playback secret must be letters, digits, '.', '_' or '-'")
    return f"""        secure_link $tc_hash,$tc_expires;
        secure_link_md5 "$tc_expires/hls/$tc_stream/ {secret}";"""
