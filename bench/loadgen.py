"""Load generators for `make bench`: wrk for request rates and latency percentiles, a
raw-socket client for stream timings, and aiohttp for many open streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import orjson

BENCH = Path(__file__).resolve().parent
EVENTS = 200
_STAMP = re.compile(rb"t(\d{6,}) ")


@dataclass(frozen=True)
class Target:
    """One endpoint to measure: a URL, the body to POST, and whether to send tokens."""

    name: str
    url: str
    body: dict[str, Any]
    auth: bool = False

    def steered(self, suffix: str) -> Target:
        """The same target asking the streaming fake for `suffix` (e.g. `-n200-i2`)."""
        body = {**self.body, "model": f"{self.body['model']}{suffix}"}
        return Target(self.name, self.url, body, self.auth)


# -- wrk ------------------------------------------------------------------------------


def wrk(
    target: Target, connections: int, seconds: float, tokens: list[str]
) -> dict[str, Any]:
    """One wrk run: requests/s, latency percentiles (ms), errors."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body_file, tokens_file, out = (Path(tmp) / n for n in ("body", "tokens", "out"))
        body_file.write_bytes(orjson.dumps(target.body))
        tokens_file.write_text("\n".join(tokens) + "\n" if target.auth else "")
        scheme_host, _, path = target.url.partition("//")[2].partition("/")
        env = {
            **os.environ,
            "BENCH_PATH": "/" + path,
            "BENCH_BODY_FILE": str(body_file),
            "BENCH_TOKENS_FILE": str(tokens_file),
            "BENCH_OUT": str(out),
        }
        args = [
            binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(BENCH / "wrk_post.lua"), f"http://{scheme_host}/",
        ]  # fmt: skip
        done = subprocess.run(args, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
        raw = json.loads(out.read_text())
    return _wrk_figures(raw)


def _wrk_figures(raw: dict[str, Any]) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": round(latency["p50"], 3),
        "p90_ms": round(latency["p90"], 3),
        "p99_ms": round(latency["p99"], 3),
        "max_ms": round(latency["max"], 3),
        "errors": errors,
        "error_kinds": raw["errors"],
    }


def median_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s, whole (its latencies belong with it),
    with every round's requests/s and the errors of all rounds added."""
    ordered = sorted(rounds, key=lambda r: r["rps"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["runs_rps"] = [r["rps"] for r in rounds]
    out["errors_all_rounds"] = sum(r["errors"] for r in rounds)
    return out


def gc_collections(metrics_port: int) -> dict[str, float]:
    """Garbage collections so far per generation, from the process's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    found = re.findall(
        r'^python_gc_collections_total\{generation="(\d)"\} ([0-9.e+]+)$', text, re.M
    )
    return {generation: float(count) for generation, count in found}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- streams ------------------------------------------------------------------------


@dataclass
class StreamTiming:
    ttfb_ms: float
    total_ms: float
    reads: int
    events: int
    delays_ms: list[float]


class _StreamReader:
    """Reads answers off one keep-alive socket with httptools' parser (the C parser
    uvicorn uses), noting when each read arrived: a client with almost no cost of its
    own, like wrk, so the time measured is the server's."""

    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.create_connection((host, port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self._sock.close()

    def exchange(self, request: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
        """Send one request; (status, send time, [(arrival ns, body bytes), ...])."""
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        arrivals: list[tuple[int, bytes]] = []
        started = time.monotonic_ns()
        self._sock.sendall(request)
        while not answer.done:
            data = self._sock.recv(1 << 20)
            arrived = time.monotonic_ns()
            if not data:
                raise ConnectionError("the server closed the connection")
            parser.feed_data(data)
            if answer.body:
                arrivals.append((arrived, b"".join(answer.body)))
                answer.body.clear()
        return parser.get_status_code(), started, arrivals


class _Answer:
    """httptools' callbacks: the body bytes of the current read, and the end."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def _request_bytes(target: Target, headers: dict[str, str]) -> tuple[str, int, bytes]:
    url = urllib.parse.urlsplit(target.url)
    body = orjson.dumps(target.body)
    lines = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return url.hostname or "127.0.0.1", url.port or 80, head + body


def _one_stream(reader: _StreamReader, request: bytes, name: str) -> StreamTiming:
    status, started, arrivals = reader.exchange(request)
    ended = time.monotonic_ns()
    if status != 200:
        body = b"".join(chunk for _, chunk in arrivals)
        raise RuntimeError(f"{name}: {status} {body[:300]!r}")
    delays = [
        (arrived - int(stamp)) / 1e6
        for arrived, chunk in arrivals
        for stamp in _STAMP.findall(chunk)
    ]
    return StreamTiming(
        ttfb_ms=(arrivals[0][0] - started) / 1e6 if arrivals else float("nan"),
        total_ms=(ended - started) / 1e6,
        reads=len(arrivals),
        events=len(delays),
        delays_ms=delays,
    )


def _headers(target: Target, token: str) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if target.auth:
        headers["authorization"] = f"Bearer {token}"
    return headers


def stream_timings(
    target: Target, token: str, *, runs: int, paced_runs: int, interval_ms: int
) -> dict[str, Any]:
    """Back-to-back 200-event streams written at once (TTFB, total) and paced ones,
    written event by event like a model's answer (TTFB, per-event delay). TTFB is
    the first byte of the body (the first event), as a client's SDK sees it."""
    bursts, paced = stream_runs(
        target, token, runs=runs, paced_runs=paced_runs, interval_ms=interval_ms
    )
    return stream_figures(bursts, paced, interval_ms)


def stream_runs(
    target: Target, token: str, *, runs: int, paced_runs: int, interval_ms: int
) -> tuple[list[StreamTiming], list[StreamTiming]]:
    """The timings of `runs` streams written at once and `paced_runs` paced ones,
    over one keep-alive connection, after one warm-up stream."""
    headers = _headers(target, token)
    host, port, burst = _request_bytes(target.steered(f"-n{EVENTS}"), headers)
    paced_target = target.steered(f"-n{EVENTS}-i{interval_ms}")
    paced_request = _request_bytes(paced_target, headers)[2]
    reader = _StreamReader(host, port)
    try:
        _one_stream(reader, burst, target.name)  # warm-up
        bursts = [_one_stream(reader, burst, target.name) for _ in range(runs)]
        paced = [
            _one_stream(reader, paced_request, target.name) for _ in range(paced_runs)
        ]
    finally:
        reader.close()
    return bursts, paced


def stream_figures(
    bursts: list[StreamTiming], paced: list[StreamTiming], interval_ms: int
) -> dict[str, Any]:
    """Medians and percentiles of stream timings (pooled over rounds if given so)."""
    delays = sorted(d for timing in paced for d in timing.delays_ms)
    return {
        "ttfb_p50_ms": round(statistics.median(t.ttfb_ms for t in bursts), 3),
        "total_p50_ms": round(statistics.median(t.total_ms for t in bursts), 3),
        "events": bursts[0].events,
        "streams": len(bursts),
        "paced_streams": len(paced),
        "paced_interval_ms": interval_ms,
        "paced_ttfb_p50_ms": round(statistics.median(t.ttfb_ms for t in paced), 3),
        "paced_total_p50_ms": round(statistics.median(t.total_ms for t in paced), 1),
        "paced_reads_per_stream": round(statistics.mean(t.reads for t in paced), 1),
        "paced_events_per_stream": round(statistics.mean(t.events for t in paced), 1),
        "chunk_delay_p50_ms": round(_percentile(delays, 50), 3),
        "chunk_delay_p99_ms": round(_percentile(delays, 99), 3),
        "chunk_delay_max_ms": round(delays[-1], 3) if delays else None,
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, round(pct / 100 * (len(values) - 1)))
    return values[index]


# -- many open streams ----------------------------------------------------------------


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmHWM), in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


async def open_streams(
    target: Target,
    tokens: list[str],
    count: int,
    pid: int,
    *,
    hold_ms: int,
    ramp: int = 50,
    deadline_s: float = 60,
) -> dict[str, Any]:
    """Hold `count` streams open at once (first event received, rest held back by the
    fake) and read the gateway's memory while they are open."""
    before = rss_mb(pid)
    # At most `ramp` streams are being opened at any moment, as when clients arrive
    # over a second or two rather than in the same millisecond.
    opening = asyncio.BoundedSemaphore(ramp)
    opened = 0
    failures: list[str] = []

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal opened
        headers = _headers(target, tokens[index % len(tokens)])
        body = orjson.dumps(target.steered(f"-n{EVENTS}-h{hold_ms}").body)
        await opening.acquire()
        waiting = True
        try:
            async with session.post(target.url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    failures.append(f"{resp.status} {(await resp.text())[:200]}")
                    return
                await resp.content.readuntil(b"\n\n")
                opened += 1
                opening.release()
                waiting = False
                await asyncio.sleep(hold_ms / 1000 + 30)
        except (TimeoutError, aiohttp.ClientError) as exc:
            failures.append(type(exc).__name__)
        finally:
            if waiting:
                opening.release()

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session, i)) for i in range(count)]
        deadline = started + deadline_s
        while opened + len(failures) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        open_s = time.monotonic() - started
        await asyncio.sleep(0.5)
        during = rss_mb(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": count,
        "opened": opened,
        "failures": len(failures),
        "failure_examples": sorted(set(failures))[:5],
        "seconds_to_open": round(open_s, 2),
        "rss_before_mb": before["rss_mb"],
        "rss_open_mb": during["rss_mb"],
        "peak_mb": during["peak_mb"],
    }
