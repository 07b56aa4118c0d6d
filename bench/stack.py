"""The processes `make bench` measures: a fake provider (nginx for fixed answers,
bench/fake_stream.py for streams), an nginx hop in front of it, Redis, the bare stack
(bench/bare_stack.py: the gateway's libraries without Subgate's logic) and one gateway
worker with session tokens and the rate limiter on.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.settings import load_settings
from shared.tokens import TokenSigner
from tests.support.processes import ServiceProcess, service_env, start_gateway
from tests.support.redis_server import free_port, valkey_binary

BENCH = Path(__file__).resolve().parent
# Model prefixes the bench's PROVIDERS_FILE routes to the streaming fake (the rest of
# the name steers the fake: see bench/fake_stream.py).
STREAM_MODEL = "gpt-bench"
CLAUDE_STREAM_MODEL = "claude-bench"
# Limits far above anything a run reaches, so every request is counted, none refused.
HIGH_LIMIT = "1000000000"
OPEN_FILES = 65536


def raise_open_file_limit(wanted: int = OPEN_FILES) -> int:
    """Raise this process's (and so its children's) open-file limit; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


def _fill(template: Path, target: Path, values: dict[str, object]) -> Path:
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"__{name}__", str(value))
    target.write_text(text)
    return target


@dataclass
class Stack:
    """Every process of one bench run, started in `start` and stopped in `stop`."""

    workdir: Path
    upstream_port: int = field(default_factory=free_port)
    stream_port: int = field(default_factory=free_port)
    hop_port: int = field(default_factory=free_port)
    hop_stream_port: int = field(default_factory=free_port)
    bare_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    gateway: ServiceProcess | None = None
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    gateway_env: dict[str, str] = field(default_factory=dict)

    # -- start and stop -------------------------------------------------------------

    def start(self) -> None:
        self.start_fixed_upstream()
        self._spawn(
            "fake_stream",
            [sys.executable, str(BENCH / "fake_stream.py"), str(self.stream_port)],
            self.stream_port,
        )
        hop_values = {
            "PORT": self.hop_port,
            "STREAM_PORT": self.hop_stream_port,
            "UPSTREAM_PORT": self.upstream_port,
            "STREAM_UPSTREAM_PORT": self.stream_port,
        }
        self._spawn_nginx("hop", self.hop_port, hop_values)
        self._spawn_redis()
        self._spawn(
            "bare_stack",
            [
                sys.executable, "-m", "bench.bare_stack", str(self.bare_port),
                "--redis", self.redis_url,
                "--fixed", f"http://127.0.0.1:{self.upstream_port}",
                "--stream", f"http://127.0.0.1:{self.stream_port}",
            ],
            self.bare_port,
        )  # fmt: skip
        self._start_gateway()

    def start_fixed_upstream(self) -> None:
        """Only the nginx fake with fixed answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn_nginx("upstream", self.upstream_port, {"PORT": self.upstream_port})

    def spawn(self, name: str, args: list[str], port: int) -> None:
        """Start another process that listens on `port`; stopped with the rest."""
        self._spawn(name, args, port)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)

    def _spawn(self, name: str, args: list[str], port: int) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._processes.append(process)
        wait_port(port, process)

    def _spawn_nginx(self, name: str, port: int, values: dict[str, object]) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = _fill(
            BENCH / f"nginx_{name}.conf",
            self.workdir / f"nginx_{name}.conf",
            {"PREFIX": self.workdir, **values},
        )
        args = [nginx, "-p", str(self.workdir), "-e", str(self.workdir / "nginx.log")]
        self._spawn(f"nginx_{name}", [*args, "-c", str(conf)], port)

    def _spawn_redis(self) -> None:
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        args = [
            valkey_binary(),
            "--port", str(self.redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(data),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._spawn("redis", args, self.redis_port)

    def _start_gateway(self) -> None:
        providers = _fill(
            BENCH / "providers_bench.toml",
            self.workdir / "providers_bench.toml",
            {"STREAM_PORT": self.stream_port},
        )
        fixed = f"http://127.0.0.1:{self.upstream_port}"
        self.gateway_env = service_env(
            JWT_SECRET=self._jwt_secret,
            REDIS_URL=self.redis_url,
            OPENAI_API_KEY="sk-bench-fake-openai-key",
            OPENAI_BASE_URL=fixed,
            ANTHROPIC_API_KEY="sk-ant-bench-fake-anthropic-key",
            ANTHROPIC_BASE_URL=fixed,
            PROVIDERS_FILE=str(providers),
            RATE_LIMIT_ENABLED="1",
            USER_MINUTE_RATE_LIMIT=HIGH_LIMIT,
            USER_HOURLY_RATE_LIMIT=HIGH_LIMIT,
            UPSTREAM_MAX_CONNECTIONS="4000",
            LOG_LEVEL="info",
            LOG_FORMAT="json",
        )
        if "PYTHONPATH" in os.environ:
            self.gateway_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self.gateway = start_gateway(
            self.workdir, self.gateway_env, auth_url="http://127.0.0.1:9"
        )

    # -- what the load generators need ------------------------------------------------

    @functools.cached_property
    def redis_client(self) -> redis.Redis:
        """A blocking client for the bench's own look-ups (INFO, MONITOR's end)."""
        return redis.Redis(port=self.redis_port, socket_timeout=5)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def gateway_port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    def gateway_log_size(self) -> int:
        assert self.gateway is not None
        return self.gateway.log_size()

    def gateway_log_since(self, offset: int) -> str:
        """What the gateway logged (JSON lines) after the first `offset` bytes."""
        assert self.gateway is not None
        return self.gateway.logs_since(offset)

    @property
    def gateway_pid(self) -> int:
        assert self.gateway is not None and self.gateway.process is not None
        return self.gateway.process.pid

    @property
    def gateway_metrics_port(self) -> int:
        assert self.gateway is not None
        return int(self.gateway.env["GATEWAY_METRICS_PORT"])

    def mint_tokens(self, count: int) -> list[str]:
        """Real session tokens for `count` users, minted as the auth service does."""
        settings = load_settings(self.gateway_env, env_file=None)
        signer = TokenSigner(settings)
        tokens = []
        for index in range(count):
            token, _ = signer.mint(
                f"acct:bench-user-{index:04d}",
                original_transaction_id=f"2000000{index:09d}",
                environment="Sandbox",
                product_id="bench.monthly",
            )
            tokens.append(token)
        return tokens
