"""``tidecast bench origin``: the tidecast origin vs plain nginx serving the same files.

Real live media is made first: ``tidecast serve`` (passthrough ladder) takes a
720p test pattern over RTMP for a few seconds and writes CMAF segments and
playlists into a temporary data directory. Then, for the whole measurement,
two servers read that one directory on loopback:

- ``tidecast origin`` (its own process, exactly as deployed), at ``/hls/...``;
- nginx serving the same directory as static files (``sendfile on``, the same
  Content-Types, CORS and Cache-Control headers), also at ``/hls/...``.

One load generator, wrk, hits one mid-sized segment and the media playlist on
each, alternating nginx and tidecast per object so both see the same machine
state, after a short warm-up of each. Fairness: tidecast's origin is one
process with one event loop, so nginx gets one worker process too; the
machine's other core is left to wrk (``--threads 1``). The CPU each server
used during its runs is printed alongside, so a load generator that saturates
before the server does shows up as a server well under 100 %.

Reported per object: requests/s, MB/s (wrk's MB: 2^20 bytes), p99 latency,
server CPU, and the ratio tidecast / nginx. Any non-2xx response or socket
error makes the run fail: a fast error page is not a result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tidecast import ffmpeg
from tidecast.bench.processes import (
    BenchError,
    Child,
    child_env,
    cpu_seconds,
    free_port,
    machine_busy,
    nginx_exe,
    run_interruptibly,
    wait_http,
)

STREAM = "main"  # the default stream ``tidecast serve`` creates on first start
TARGET_RATIO = 0.7  # tidecast / nginx on segments

NGINX_CONF = """\
# written by `tidecast bench origin`: static files, like the origin serves them
worker_processes {workers};
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # uvicorn keeps a connection for any number of requests; so does nginx here
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{
{types}
    }}
    default_type application/octet-stream;
    map $uri $tidecast_cache_control {{
        ~\\.(m3u8|mpd)$ "public, max-age=30";
        default "public, max-age=31536000, immutable";
    }}
    server {{
        listen 127.0.0.1:{port};
        location /hls/ {{
            alias {hls_root}/;
            add_header Cache-Control $tidecast_cache_control;
            add_header Access-Control-Allow-Origin "*" always;
            add_header Access-Control-Expose-Headers "Content-Length, Content-Range, ETag, Age" always;
        }}
    }}
}}
"""


# ---------------------------------------------------------------- wrk output

_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    requests_per_s: float
    bytes_per_s: float
    p99_ms: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_per_s / (1 << 20)


def parse_wrk(text: str) -> WrkResult:
    """Figures from wrk's report; raises BenchError on errors or an unreadable report."""
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors and any(int(n) for n in errors.groups()):
        raise BenchError(f"wrk saw socket errors:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx and int(non2xx.group(1)):
        raise BenchError(f"wrk saw {non2xx.group(1)} non-2xx responses:\n{text}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", text)
    total = re.search(r"(\d+) requests in ", text)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    if not (rps and transfer and total and p99):
        raise BenchError(f"cannot read wrk's report:\n{text}")
    return WrkResult(
        requests=int(total.group(1)),
        requests_per_s=float(rps.group(1)),
        bytes_per_s=float(transfer.group(1)) * _UNITS[transfer.group(2)],
        p99_ms=float(p99.group(1)) * _TIME_UNITS[p99.group(2)],
    )


# ---------------------------------------------------------------- processes


# ---------------------------------------------------------------- media


async def make_media(data_dir: Path, seconds: float, size: str, log_dir: Path) -> None:
    """Real live segments: tidecast serve takes an RTMP test pattern, then stops."""
    http_port, rtmp_port = free_port(), free_port()
    env = {**child_env(), "TIDECAST_LADDER": "none"}
    serve = await Child.start("tidecast serve", [
        sys.executable, "-m", "tidecast", "serve", "--data-dir", str(data_dir),
        "--http-port", str(http_port), "--rtmp-port", str(rtmp_port), "--reconnect-grace", "0",
    ], log_dir / "serve.log", env)  # fmt: skip
    try:
        key = (await serve.wait_for_line(r"stream key:\s+(\S+)")).group(1)
        w, h = (int(x) for x in size.lower().split("x"))
        pattern = ffmpeg.TestPattern(width=w, height=h, fps=30, gop_seconds=2.0, duration=seconds,
                                     font=ffmpeg.clock_font())  # fmt: skip
        url = f"rtmp://127.0.0.1:{rtmp_port}/live/{key}"
        print(f"making media: {seconds:g} s of a {w}x{h}@30 test pattern through tidecast serve ...",
              flush=True)  # fmt: skip
        publisher = await ffmpeg.spawn(
            ffmpeg.publish_test_pattern_args(pattern, url, ffmpeg.ffmpeg_exe()), "publisher"
        )
        try:
            rc = await publisher.wait(seconds + 60)
        finally:
            await publisher.stop()  # already gone unless interrupted
        if rc != 0:
            raise BenchError(
                f"the publisher exited with {rc}:\n" + "\n".join(publisher.stderr_tail[-10:])
            )
        await asyncio.sleep(1.0)  # the last segment reaches the playlist
    finally:
        rc = await serve.stop()
    if rc != 0:
        raise BenchError(f"tidecast serve exited with {rc}:\n{serve.tail()}")


@dataclass(frozen=True, slots=True)
class Objects:
    segment: str  # path below /hls/
    segment_size: int
    playlist: str
    playlist_size: int


def pick_objects(hls_root: Path) -> Objects:
    """A mid-sized media segment of the source rendition and its media playlist."""
    segments = sorted(hls_root.glob(f"{STREAM}/*/source/*.m4s"), key=lambda p: p.stat().st_size)
    playlist = hls_root / STREAM / "source.m3u8"
    if len(segments) < 3 or not playlist.is_file():
        found = sorted(str(p.relative_to(hls_root)) for p in hls_root.rglob("*") if p.is_file())
        raise BenchError(f"tidecast made too little media under {hls_root}: {found}")
    seg = segments[len(segments) // 2]
    return Objects(
        str(seg.relative_to(hls_root)), seg.stat().st_size,
        str(playlist.relative_to(hls_root)), playlist.stat().st_size,
    )  # fmt: skip


# ---------------------------------------------------------------- servers


def nginx_conf(prefix: Path, port: int, hls_root: Path, workers: int) -> str:
    from tidecast.origin.files import MEDIA_TYPES

    types = "\n".join(f'        "{ctype}" {suffix[1:]};' for suffix, ctype in MEDIA_TYPES.items())
    return NGINX_CONF.format(workers=workers, prefix=prefix, types=types, port=port,
                             hls_root=hls_root)  # fmt: skip


async def check_same(bases: dict[str, str], objects: Objects, hls_root: Path) -> None:
    """Both servers answer 200 with the file's exact bytes and its media type."""
    from tidecast.origin.files import MEDIA_TYPES

    async with httpx.AsyncClient(timeout=10) as client:
        for path in (objects.segment, objects.playlist):
            want = (hls_root / path).read_bytes()
            ctype = MEDIA_TYPES[Path(path).suffix]
            for name, base in bases.items():
                r = await client.get(f"{base}/hls/{path}")
                if r.status_code != 200 or r.content != want:
                    raise BenchError(f"{name} answered {r.status_code} with {len(r.content)} bytes "
                                     f"for {path} ({len(want)} on disk)")  # fmt: skip
                if r.headers.get("content-type") != ctype:
                    raise BenchError(f"{name} sent {r.headers.get('content-type')!r} for {path}")


async def run_wrk(wrk: str, url: str, seconds: float, threads: int, connections: int) -> str:
    args = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
            "--latency", url]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{text}")
    return text


@dataclass(frozen=True, slots=True)
class Arm:
    result: WrkResult
    cpu_percent: float


async def measure(
    wrk: str, url: str, pid: int, seconds: float, threads: int, connections: int
) -> Arm:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    text = await run_wrk(wrk, url, seconds, threads, connections)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    return Arm(parse_wrk(text), 100 * (cpu1 - cpu0) / (t1 - t0))


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    wrk = shutil.which("wrk")
    nginx = nginx_exe()
    missing = [name for name, exe in (("wrk", wrk), ("nginx-light", nginx)) if exe is None]
    if missing:
        print(f"tidecast bench origin: needs {' and '.join(missing)}: "
              f"apt-get install -y {' '.join(missing)}  (or scripts/setup.sh --test)",
              file=sys.stderr)  # fmt: skip
        return 2
    assert wrk is not None and nginx is not None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per check request
    children: list[Child] = []
    results: dict[tuple[str, str], Arm] = {}
    with tempfile.TemporaryDirectory(prefix="tidecast-bench-origin-") as tmp:
        tmpdir = Path(tmp)
        data_dir = tmpdir / "data"
        try:
            await make_media(data_dir, args.media_seconds, args.size, tmpdir)
            hls_root = (data_dir / "media" / "hls").resolve()
            objects = pick_objects(hls_root)

            origin_port, nginx_port = free_port(), free_port()
            origin = await Child.start("tidecast origin", [
                sys.executable, "-m", "tidecast", "origin", "--data-dir", str(data_dir),
                "--http-port", str(origin_port),
            ], tmpdir / "origin.log", child_env())  # fmt: skip
            children.append(origin)
            prefix = tmpdir / "nginx"
            prefix.mkdir()
            conf = prefix / "nginx.conf"
            conf.write_text(nginx_conf(prefix, nginx_port, hls_root, args.nginx_workers))
            ngx = await Child.start("nginx", [nginx, "-p", str(prefix), "-c", str(conf),
                                              "-g", "daemon off;"], tmpdir / "nginx.log", child_env())  # fmt: skip
            children.append(ngx)
            await origin.wait_for_line(r"^tidecast origin: HTTP on ")
            bases = {"nginx": f"http://127.0.0.1:{nginx_port}",
                     "tidecast": f"http://127.0.0.1:{origin_port}"}  # fmt: skip
            await wait_http(f"{bases['nginx']}/hls/{objects.playlist}", ngx)
            await check_same(bases, objects, hls_root)
            pids = {"nginx": ngx.proc.pid, "tidecast": origin.proc.pid}

            print(f"segment:  /hls/{objects.segment}  ({_size(objects.segment_size)})")
            print(f"playlist: /hls/{objects.playlist}  ({_size(objects.playlist_size)})")
            busy = await machine_busy()
            if busy > 0.1:
                print(f"note: {busy:.0%} of the machine's CPU was busy with other work just "
                      "before measuring: the figures are noisy")  # fmt: skip
            print(f"wrk: {args.threads} thread(s), {args.connections} connections, "
                  f"{args.seconds:g} s per run; nginx {args.nginx_workers} worker(s) vs "
                  "tidecast origin 1 process", flush=True)  # fmt: skip
            for target, path in (("segment", objects.segment), ("playlist", objects.playlist)):
                for server in ("nginx", "tidecast"):  # warm-up: caches, connections, JIT-less paths
                    await run_wrk(wrk, f"{bases[server]}/hls/{path}", 1, args.threads,
                                  args.connections)  # fmt: skip
                for server in ("nginx", "tidecast"):
                    arm = await measure(wrk, f"{bases[server]}/hls/{path}", pids[server],
                                        args.seconds, args.threads, args.connections)  # fmt: skip
                    results[(target, server)] = arm
                    print(f"  {target:<8} {server:<8} {arm.result.requests_per_s:10.0f} req/s "
                          f"{arm.result.mb_per_s:9.1f} MB/s", flush=True)  # fmt: skip
        except BenchError as exc:
            print(f"tidecast bench origin: {exc}", file=sys.stderr)
            return 1
        finally:
            for child in reversed(children):
                rc = await child.stop(signal.SIGQUIT if child.name == "nginx" else signal.SIGINT)
                if rc not in (0, -signal.SIGINT, -signal.SIGQUIT):
                    print(f"{child.name} exited with {rc}:\n{child.tail()}", file=sys.stderr)

    print()
    print(f"{'object':<9} {'server':<9} {'req/s':>10} {'MB/s':>9} {'p99':>10} {'server CPU':>11}")
    for (target, server), arm in results.items():
        r = arm.result
        print(f"{target:<9} {server:<9} {r.requests_per_s:10.0f} {r.mb_per_s:9.1f} "
              f"{r.p99_ms:7.2f} ms {arm.cpu_percent:10.0f}%")  # fmt: skip
    print("(MB = 2^20 bytes, as wrk counts; server CPU: % of one core, nginx's master + workers)")
    print()
    ratios: dict[str, float] = {}
    for target in ("segment", "playlist"):
        ours, theirs = results[(target, "tidecast")].result, results[(target, "nginx")].result
        ratios[target] = ours.requests_per_s / theirs.requests_per_s
        print(f"ratio tidecast/nginx, {target + 's':<9}: {ratios[target]:.2f}x req/s, "
              f"{ours.bytes_per_s / theirs.bytes_per_s:.2f}x MB/s")  # fmt: skip
    verdict = "met" if ratios["segment"] >= TARGET_RATIO else "NOT met"
    print(f"target tidecast >= {TARGET_RATIO:g}x nginx on segments: {verdict}")
    low = [f"{s} {results[(t, s)].cpu_percent:.0f}%" for t in ("segment", "playlist")
           for s in ("nginx", "tidecast") if results[(t, s)].cpu_percent < 80]  # fmt: skip
    if low:
        print(f"note: server(s) below 80% of a core ({', '.join(low)}): the load generator or the "
              "loopback copy, not that server, limited those runs")  # fmt: skip
    return 0


async def main(args: argparse.Namespace) -> int:
    """Run the bench; Ctrl-C or SIGTERM stop it with every server it started
    (they run in sessions of their own, so the terminal's Ctrl-C reaches only us)."""
    return await run_interruptibly(run(args), "tidecast bench origin: interrupted; its servers are stopped")
