"""Helpers of the hostile tests: raw HTTP over sockets (httpx normalises too much),
gateways started with their own settings, and readings of a running process."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from tests.support.processes import ServiceProcess, start_auth, start_gateway

ERROR_CODES = {
    400: {"invalid_request", "unsupported_parameter"},
    401: {"subscription_required"},
    403: {"banned", "endpoint_not_allowed"},
    404: {"not_found"},
    407: {"session_expired"},
    413: {"request_too_large"},
    429: {"rate_limited", "login_rate_limited"},
    502: {"upstream_unreachable"},
    503: {"provider_unavailable", "unavailable"},
    504: {"upstream_timeout"},
}


@dataclass
class RawAnswer:
    """What came back on a raw connection."""

    status: int
    head: str
    body: bytes

    def header(self, name: str) -> str | None:
        pattern = rf"^{re.escape(name)}:\s*(.*)$"
        match = re.search(pattern, self.head, re.IGNORECASE | re.MULTILINE)
        return match.group(1).strip() if match else None


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send `data` as it is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = _read_all(sock)
    return parse_answer(received)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(received: bytes) -> RawAnswer:
    head, _, body = received.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", text)
    status = int(match.group(1)) if match else 0
    if re.search(r"^transfer-encoding:\s*chunked", text, re.I | re.M):
        body = _unchunk(body)
    return RawAnswer(status, text, body)


def _unchunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


def http_request(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """A raw HTTP/1.1 request that asks the server to close afterwards."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class OwnStack:
    """An auth service and a gateway started with settings of a test module."""

    auth: ServiceProcess
    gateway: ServiceProcess

    @property
    def url(self) -> str:
        return self.gateway.url

    def stop(self) -> None:
        self.gateway.stop()
        self.auth.stop()


@contextmanager
def own_stack(tmp: Path, env: dict[str, str]) -> Iterator[OwnStack]:
    auth = start_auth(tmp, env)
    try:
        gateway = start_gateway(tmp, env, auth.url)
    except BaseException:
        auth.stop()
        raise
    stack = OwnStack(auth, gateway)
    try:
        yield stack
    finally:
        stack.stop()


def open_fds(process: ServiceProcess) -> int:
    assert process.process is not None
    return len(os.listdir(f"/proc/{process.process.pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def metrics_text(process: ServiceProcess, prefix: str = "GATEWAY") -> str:
    port = process.env[f"{prefix}_METRICS_PORT"]
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of a series' samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in (labels or {}).items()):
            total += float(value)
    return total


def poll(check: object, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Call `check` until it returns true or `timeout` passes."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


def assert_error_shape(
    status: int, body: bytes, shape: str = "openai", *, relayed: bool = False
) -> None:
    """The contract's error body for `status` (a provider's relayed status may carry
    `upstream_error`)."""
    parsed = orjson.loads(body)
    if shape == "anthropic":
        assert parsed["type"] == "error", parsed
        error = parsed["error"]
        assert set(error) >= {"type", "message"}, parsed
    else:
        error = parsed["error"]
        assert set(error) == {"message", "type", "code", "param"}, parsed
    allowed = ERROR_CODES.get(status, set()) | (
        {"upstream_error"} if relayed else set()
    )
    if "code" in error:
        assert error["code"] in allowed, parsed
