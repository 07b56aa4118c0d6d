"""Subgate's services as real processes on loopback, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
# A JWT secret only the tests use.
TEST_JWT_SECRET = "test-secret-for-subgate-tests-0123456789abcdef"


class ServiceProcess:
    """`python -m <module>` with its own environment, logging to a file.

    `python` and `cwd` run another interpreter or another checkout (the benchmark's
    comparisons); `-m` imports the module from `cwd` first.
    """

    def __init__(
        self,
        module: str,
        env: dict[str, str],
        port: int,
        log_path: Path,
        *,
        python: str = sys.executable,
        cwd: Path = REPO,
    ):
        self.module = module
        self.env = env
        self.port = port
        self.log_path = log_path
        self.python = python
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_path: str = "/healthz", timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [self.python, "-m", self.module],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self.wait_for(ready_path, timeout)
        except BaseException:  # never ready, or interrupted: leave nothing running
            self.stop()
            raise

    def wait_for(self, path: str, timeout: float, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.module} did not answer {path}:\n{self.logs()[-3000:]}"
        )

    def logs(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def logs_since(self, offset: int) -> str:
        """What the process logged after the first `offset` bytes."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def service_env(**overrides: str) -> dict[str, str]:
    """A clean environment for a service: nothing from the developer's `.env`."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SUBGATE_ENV_FILE": "/nonexistent/.env",
        "JWT_SECRET": TEST_JWT_SECRET,
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "APPSTORE_ONLINE_CHECKS": "0",
        "GATEWAY_METRICS_PORT": str(free_port()),
        "AUTH_METRICS_PORT": str(free_port()),
    }
    env.update(overrides)
    return env


def start_auth(tmp: Path, env: dict[str, str], name: str = "auth") -> ServiceProcess:
    port = free_port()
    full = {**env, "AUTH_HOST": "127.0.0.1", "AUTH_PORT": str(port)}
    service = ServiceProcess("auth_service", full, port, tmp / f"{name}.log")
    service.start()
    return service


def start_gateway(
    tmp: Path,
    env: dict[str, str],
    auth_url: str,
    name: str = "gateway",
    *,
    python: str = sys.executable,
    cwd: Path = REPO,
) -> ServiceProcess:
    port = free_port()
    full = {
        **env,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(free_port()),
        "AUTH_URL": auth_url,
    }
    service = ServiceProcess(
        "gateway_service", full, port, tmp / f"{name}.log", python=python, cwd=cwd
    )
    service.start()
    return service
