"""Settings: one typed, validated object built from flags, environment and defaults.

Nothing reads the environment after start-up; every component gets the
``Settings`` it needs passed in.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tidecast import keys
from tidecast.access.tokens import MAX_TTL, BadSecret, check_secret
from tidecast.netaddr import ProxyError, parse_listen, parse_networks
from tidecast.store.factory import StoreURLError, check_store_url
from tidecast.transcode.ladder import DEFAULT_LADDER, LadderError, Rung, parse_ladder

ENV_PREFIX = "TIDECAST_"
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


class ConfigError(ValueError):
    """A setting has a value tidecast cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    http_port: int = 8080
    rtmp_port: int = 1935
    data_dir: Path = field(default_factory=lambda: Path("tidecast-data"))
    # the host name printed in publish/watch URLs (defaults to the bind host, or
    # 127.0.0.1 when binding every interface)
    public_host: str | None = None
    segment_target: float = 2.0  # seconds; cut at the first keyframe at or after this
    # low-latency HLS: parts, blocking reload, delta updates, for every stream but those
    # set to latency "standard" or encrypted; off by default until the whole suite
    # passes with it on (see README: Low-latency HLS)
    ll_hls: bool = False
    part_target: float = 1 / 3  # seconds: the LL-HLS part duration (0.1..1, at most segment_target / 2)
    playlist_window: int = 900  # segments in a live playlist: the DVR window (30 min at 2 s)
    reconnect_grace: float = 30.0  # seconds a broadcast waits for its publisher to return
    rtmp_app: str = "live"
    ladder: str = "default"  # "default", "none" (source only) or "1080:6000,720:3500,..."
    source_rendition: bool = False  # also list the untouched source next to the ladder
    # a source at the height of its top rung is listed in that rung's place, not encoded
    # again (see transcode.ladder.Ladder); off: every rung is encoded
    passthrough: bool = True
    workers: int = 0  # transcode worker processes; 0 = one per core
    x264_preset: str = "veryfast"
    transcode_attempts: int = 3  # then the job is dead-lettered and the segment is a gap
    # seconds the oldest transcode job may be outstanding before new segments skip top rungs
    transcode_lag_threshold: float = 8.0
    database_url: str = ""  # SQLAlchemy URL; empty = SQLite in the data dir
    bus_url: str = ""  # nats://host:4222 for NATS JetStream; empty = in-process bus
    bus_prefix: str = "tidecast"  # subject/stream namespace on a shared NATS server
    store_url: str = ""  # file:///dir or s3://bucket/prefix?endpoint=...; empty = <data dir>/media
    origin_cache_mb: int = 256  # the origin's in-memory cache of hot objects (non-local stores)
    lease_ttl: float = 3.0  # seconds a packager's lease on a stream lasts without renewal
    job_ack_wait: float = 30.0  # seconds before a silent worker's job goes to another worker
    # shared by every origin of a deployment (API admin token; chat tokens are derived
    # from it); empty = a random token kept in the data dir
    admin_token: str = ""
    chat_blocked_words: str = ""  # comma-separated; messages containing one are refused
    rtmp_handshake_timeout: float = 10.0  # seconds from TCP connect to publish (one deadline)
    rtmp_idle_timeout: float = 30.0  # seconds a publisher may send nothing
    # a segment may last this long (0 = max(10 x segment_target, 20 s)) and weigh this much:
    # a publisher past either (e.g. no keyframe for that long) is refused and disconnected
    segment_max_duration: float = 0.0
    segment_max_mb: int = 64
    # seconds the packager waits for a missing segment before it lists EXT-X-GAP
    # (0 = 3 x segment_target); a real segment arriving later heals the gap
    segment_deadline: float = 0.0
    store_retry_deadline: float = 30.0  # seconds one store operation retries transient errors
    heal: bool = True  # re-encode, at low priority, what live skipped or lost (recordings heal)
    # -- TLS: RTMPS ingest and HTTPS on the origin, both off until a certificate is set
    rtmps_port: int = 1936
    https_port: int = 8443
    tls_cert: str = ""  # PEM certificate chain (may hold the key too)
    tls_key: str = ""  # PEM private key; empty = in tls_cert
    # -- ingest auth (see ingest/auth.py)
    ingest_token_ttl: float = 3600.0  # seconds an ingest JWT issued by the API stays valid
    ingest_token_audience: str = "tidecast-ingest"  # the aud every ingest JWT must carry
    ingest_jwks_url: str = ""  # an external issuer's JWKS (https://.../jwks.json); empty = none
    ingest_jwks_issuer: str = ""  # the iss tokens signed by the JWKS keys must carry (empty: any)
    on_publish_url: str = ""  # POSTed before a publish starts: 2xx allows, anything else refuses
    on_publish_done_url: str = ""  # POSTed when a publish ends (the answer is ignored)
    webhook_timeout: float = 3.0  # seconds a webhook has to answer
    webhook_timeout_rule: str = "deny"  # what an unanswered on_publish means: "allow" or "deny"
    ingest_allow: str = ""  # CIDRs allowed to publish (comma-separated); empty = every address
    ingest_deny: str = ""  # CIDRs never allowed to publish (checked first)
    ingest_max_failures: int = 10  # failed publish attempts from one address within the window...
    ingest_failure_window: float = 60.0  # ...seconds...
    ingest_ban_seconds: float = 600.0  # ...ban it for this long
    rtmp_max_connections: int = 512  # RTMP(S) connections at once
    rtmp_max_connections_per_ip: int = 16  # RTMP(S) connections at once from one address
    # playback tokens (token and password streams): the secret every origin and the nginx
    # edge share (empty = derived from admin_token, else kept in the data dir), and how
    # long a token the password buys lasts
    playback_secret: str = ""
    playback_token_ttl: float = 6 * 3600.0
    password_attempts: int = 5  # wrong stream passwords per address per minute, then 429
    key_rotation: int = 10  # AES-128 streams: a new key every this many segments
    # HTTP connections: a global cap, a cap per client address (trusted proxies are exempt:
    # an edge holds many viewers' connections), and one deadline for a whole request head
    http_max_connections: int = 8192
    http_max_per_ip: int = 64
    http_head_timeout: float = 10.0
    # comma-separated CIDRs whose X-Forwarded-For is believed (e.g. the edge's address);
    # empty: no one's, every client is its socket's address
    trusted_proxies: str = ""
    chat_join_timeout: float = 5.0  # seconds a chat socket has to send its join
    chat_max_per_ip: int = 20  # open chat sockets per client address (per node)
    download_max_per_ip: int = 2  # MP4 downloads in progress per client address
    download_max_total: int = 8  # MP4 downloads in progress on this node
    download_max_builds: int = 2  # MP4 files being made (one ffmpeg each) at once
    # "host:port": /metrics and /api/v1/transcode also served there without a token
    # (on the main port they need the admin token); empty: no operator listener
    operator_listen: str = ""

    def __post_init__(self) -> None:
        for name in ("http_port", "rtmp_port", "rtmps_port", "https_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be between 0 and 65535, got {port}")
        if not 0.5 <= self.segment_target <= 30:
            raise ConfigError(
                f"segment_target must be between 0.5 and 30 seconds, got {self.segment_target}"
            )
        if not 0.1 <= self.part_target <= 1.0 or self.part_target > self.segment_target / 2:
            raise ConfigError(f"part_target must be 0.1..1.0 s and at most half of segment_target "
                              f"({self.segment_target} s), got {self.part_target}")  # fmt: skip
        if not 3 <= self.playlist_window <= 20000:
            raise ConfigError(f"playlist_window must be 3..20000, got {self.playlist_window}")
        if self.x264_preset not in X264_PRESETS:
            raise ConfigError(f"x264_preset must be one of {', '.join(X264_PRESETS)}")
        if not 0 <= self.workers <= 256 or not 1 <= self.transcode_attempts <= 20:
            raise ConfigError("workers must be 0..256 and transcode_attempts 1..20")
        self.rungs()  # validates the ladder
        if self.bus_url and not self.bus_url.startswith(("nats://", "tls://")):
            raise ConfigError(f"bus_url must be a nats:// URL, got {self.bus_url!r}")
        try:
            check_store_url(self.store_url)
        except StoreURLError as exc:
            raise ConfigError(str(exc)) from exc
        if not 0 <= self.origin_cache_mb <= 1 << 20:
            raise ConfigError("origin_cache_mb must be 0..1048576")
        if not 0.5 <= self.lease_ttl <= 600 or not 2 <= self.job_ack_wait <= 3600:
            raise ConfigError("lease_ttl must be 0.5..600 s and job_ack_wait 2..3600 s")
        if self.rtmp_handshake_timeout <= 0 or self.rtmp_idle_timeout <= 0:
            raise ConfigError("RTMP timeouts must be positive")
        if self.reconnect_grace < 0:
            raise ConfigError("reconnect_grace must not be negative")
        if self.segment_max_duration and not (
            2 * self.segment_target <= self.segment_max_duration <= 3600
        ):
            raise ConfigError("segment_max_duration must be 0 (auto) or 2 x segment_target..3600 s")
        if not 1 <= self.segment_max_mb <= 4096:
            raise ConfigError("segment_max_mb must be 1..4096")
        if self.segment_deadline and not self.segment_target <= self.segment_deadline <= 600:
            raise ConfigError("segment_deadline must be 0 (auto) or segment_target..600 s")
        if not 1 <= self.store_retry_deadline <= 3600:
            raise ConfigError("store_retry_deadline must be 1..3600 s")
        self._check_security()
        if self.playback_secret:
            try:
                check_secret(self.playback_secret)
            except BadSecret as exc:
                raise ConfigError(str(exc)) from exc
        if not 60 <= self.playback_token_ttl <= MAX_TTL:
            raise ConfigError(f"playback_token_ttl must be 60..{int(MAX_TTL)} s, got {self.playback_token_ttl}")
        if not 1 <= self.password_attempts <= 1000:
            raise ConfigError(f"password_attempts must be 1..1000, got {self.password_attempts}")
        if not 1 <= self.key_rotation <= 1_000_000:
            raise ConfigError(f"key_rotation must be 1..1000000 segments, got {self.key_rotation}")
        if not 1 <= self.http_max_per_ip <= self.http_max_connections <= 1_000_000:
            raise ConfigError("http_max_per_ip must be 1..http_max_connections (at most 1000000)")
        if not 0.5 <= self.http_head_timeout <= 600 or not 0.5 <= self.chat_join_timeout <= 600:
            raise ConfigError("http_head_timeout and chat_join_timeout must be 0.5..600 s")
        if not 1 <= self.chat_max_per_ip <= 100_000:
            raise ConfigError("chat_max_per_ip must be 1..100000")
        if not 1 <= self.download_max_per_ip <= self.download_max_total <= 10_000:
            raise ConfigError("download_max_per_ip must be 1..download_max_total (at most 10000)")
        if not 1 <= self.download_max_builds <= 64:
            raise ConfigError("download_max_builds must be 1..64")
        try:
            parse_networks(self.trusted_proxies)
            if self.operator_listen:
                parse_listen(self.operator_listen)
        except ProxyError as exc:
            raise ConfigError(str(exc)) from exc
        if not self.transcode_lag_threshold > 0:
            raise ConfigError(
                f"transcode_lag_threshold must be positive, got {self.transcode_lag_threshold}"
            )

    def _check_security(self) -> None:
        from tidecast.ingest.access import AccessRuleError, parse_networks

        if self.tls_key and not self.tls_cert:
            raise ConfigError("tls_key is set but tls_cert is not: set both (PEM files)")
        if not 60 <= self.ingest_token_ttl <= 30 * 86400:
            raise ConfigError("ingest_token_ttl must be 60 s..30 days")
        if not self.ingest_token_audience:
            raise ConfigError("ingest_token_audience must not be empty")
        for name in ("ingest_jwks_url", "on_publish_url", "on_publish_done_url"):
            url = getattr(self, name)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name} must be an http:// or https:// URL, got {url!r}")
        if not 0.1 <= self.webhook_timeout <= 60:
            raise ConfigError("webhook_timeout must be 0.1..60 s")
        if self.on_publish_url and self.webhook_timeout >= self.rtmp_handshake_timeout:
            raise ConfigError("webhook_timeout must be shorter than rtmp_handshake_timeout "
                              "(the connect-to-publish deadline)")  # fmt: skip
        if self.webhook_timeout_rule not in ("allow", "deny"):
            raise ConfigError(
                f"webhook_timeout_rule must be allow or deny, got {self.webhook_timeout_rule!r}"
            )
        for name in ("ingest_allow", "ingest_deny"):
            try:
                parse_networks(getattr(self, name))
            except AccessRuleError as exc:
                raise ConfigError(f"{name}: {exc}") from exc
        if not 1 <= self.ingest_max_failures <= 100_000:
            raise ConfigError("ingest_max_failures must be 1..100000")
        if not 1 <= self.ingest_failure_window <= 86400 or not 0 <= self.ingest_ban_seconds <= 30 * 86400:
            raise ConfigError("ingest_failure_window must be 1..86400 s, ingest_ban_seconds 0..30 days")
        if not 1 <= self.rtmp_max_connections_per_ip <= self.rtmp_max_connections <= 100_000:
            raise ConfigError("need 1 <= rtmp_max_connections_per_ip <= rtmp_max_connections <= 100000")

    @property
    def tls(self) -> bool:
        """Whether the TLS listeners (RTMPS, HTTPS) run: a certificate is configured."""
        return bool(self.tls_cert)

    @property
    def gap_after(self) -> float:
        """Seconds a missing segment is waited for before it is listed as a gap."""
        return self.segment_deadline or 3 * self.segment_target

    @property
    def max_segment_duration(self) -> float:
        return self.segment_max_duration or max(10 * self.segment_target, 20.0)

    def rungs(self) -> tuple[Rung, ...]:
        if self.ladder in ("none", ""):
            return ()
        if self.ladder == "default":
            return DEFAULT_LADDER
        try:
            return parse_ladder(self.ladder)
        except LadderError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tidecast.db').resolve()}"

    @property
    def url_host(self) -> str:
        if self.public_host:
            return self.public_host
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def publish_url(self, key: str | None = None, *, tls: bool = False) -> str:
        scheme, port = ("rtmps", self.rtmps_port) if tls else ("rtmp", self.rtmp_port)
        base = f"{scheme}://{self.url_host}:{port}/{self.rtmp_app}"
        return f"{base}/{key}" if key else base

    def watch_url(self, name: str) -> str:
        return f"http://{self.url_host}:{self.http_port}/watch/{name}"

    def hls_url(self, name: str) -> str:
        return f"http://{self.url_host}:{self.http_port}{keys.url_path(keys.live_master(name))}"

    def with_overrides(self, **changes: object) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **clean)  # type: ignore[arg-type]


_ENV_FIELDS: dict[str, Callable[[str], object]] = {
    "host": str,
    "http_port": int,
    "rtmp_port": int,
    "data_dir": Path,
    "public_host": str,
    "segment_target": float,
    "ll_hls": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "part_target": float,
    "playlist_window": int,
    "reconnect_grace": float,
    "rtmp_handshake_timeout": float,
    "ladder": str,
    "source_rendition": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "passthrough": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "workers": int,
    "x264_preset": str,
    "transcode_attempts": int,
    "transcode_lag_threshold": float,
    "chat_blocked_words": str,
    "database_url": str,
    "bus_url": str,
    "bus_prefix": str,
    "rtmp_idle_timeout": float,
    "store_url": str,
    "origin_cache_mb": int,
    "lease_ttl": float,
    "job_ack_wait": float,
    "admin_token": str,
    "segment_max_duration": float,
    "segment_max_mb": int,
    "segment_deadline": float,
    "store_retry_deadline": float,
    "heal": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "rtmps_port": int,
    "https_port": int,
    "tls_cert": str,
    "tls_key": str,
    "ingest_token_ttl": float,
    "ingest_token_audience": str,
    "ingest_jwks_url": str,
    "ingest_jwks_issuer": str,
    "on_publish_url": str,
    "on_publish_done_url": str,
    "webhook_timeout": float,
    "webhook_timeout_rule": str,
    "ingest_allow": str,
    "ingest_deny": str,
    "ingest_max_failures": int,
    "ingest_failure_window": float,
    "ingest_ban_seconds": float,
    "rtmp_max_connections": int,
    "rtmp_max_connections_per_ip": int,
    "playback_secret": str,
    "playback_token_ttl": float,
    "password_attempts": int,
    "key_rotation": int,
    "http_max_connections": int,
    "http_max_per_ip": int,
    "http_head_timeout": float,
    "trusted_proxies": str,
    "chat_join_timeout": float,
    "chat_max_per_ip": int,
    "download_max_per_ip": int,
    "download_max_total": int,
    "download_max_builds": int,
    "operator_listen": str,
}


def from_file(path: Path, base: Settings | None = None) -> Settings:
    """Settings from a TOML file over ``base``: the same names as the ``TIDECAST_*``
    variables, lower case, at the top level (``bus_url = "nats://..."``). One file
    can configure every role of a deployment; unknown names are refused."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(_ENV_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    changes: dict[str, object] = {}
    for name, value in data.items():
        kind = _ENV_FIELDS[name]
        if isinstance(value, bool) and kind is not str:
            changes[name] = value
            continue
        if isinstance(value, dict | list):
            raise ConfigError(f"config file {path}: {name} must be a plain value")
        try:
            changes[name] = kind(str(value))
        except ValueError as exc:
            raise ConfigError(f"config file {path}: {name} = {value!r}: {exc}") from exc
    return (base or Settings()).with_overrides(**changes)


def from_env(environ: Mapping[str, str] | None = None, base: Settings | None = None) -> Settings:
    """Settings from ``TIDECAST_*`` variables over ``base`` (or the defaults)."""
    env = os.environ if environ is None else environ
    changes: dict[str, object] = {}
    for name, kind in _ENV_FIELDS.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            continue
        try:
            changes[name] = kind(raw)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    return (base or Settings()).with_overrides(**changes)
