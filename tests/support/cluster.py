"""The production topology on loopback for tests: auth, gateway replicas on fixed ports
and nginx in front of them, configured like docker-compose's load balancer.

Services are started with tests/support/processes.py; nginx's configuration and command
line come from scripts/cluster.py (the code behind `make cluster`).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from scripts.cluster import find_nginx, nginx_command, write_nginx_config
from tests.support.processes import ServiceProcess, start_auth, start_gateway
from tests.support.redis_server import free_port


class NginxProcess:
    """nginx in the foreground (not a daemon) with a generated config under `prefix`."""

    def __init__(self, binary: str, prefix: Path, gateway_ports: list[int]) -> None:
        self.binary = binary
        self.prefix = prefix
        self.port = free_port()
        self.conf = write_nginx_config(prefix, f"127.0.0.1:{self.port}", gateway_ports)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        log = open(self.prefix / "nginx.out", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            nginx_command(self.binary, self.prefix, self.conf),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/nginx-health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nginx did not answer:\n{self.logs()}")

    def logs(self) -> str:
        parts = [self.prefix / "nginx.out", self.prefix / "error.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


class Cluster:
    """auth, `replicas` gateways and nginx; Redis and providers are the caller's."""

    def __init__(self, tmp: Path, env: dict[str, str], replicas: int = 3) -> None:
        self.tmp = tmp
        self.env = env
        self.replicas = replicas
        self.auth: ServiceProcess | None = None
        self.gateways: list[ServiceProcess] = []
        self.nginx: NginxProcess | None = None

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def start(self) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed")
        self.auth = start_auth(self.tmp, self.env)
        for number in range(1, self.replicas + 1):
            gateway = start_gateway(
                self.tmp, self.env, self.auth.url, name=f"gateway{number}"
            )
            gateway.wait_for("/readyz", 20)
            self.gateways.append(gateway)
        ports = [gateway.port for gateway in self.gateways]
        self.nginx = NginxProcess(nginx, self.tmp / "nginx", ports)
        self.nginx.start()

    def restart_gateway(self, gateway: ServiceProcess) -> tuple[int | None, str]:
        """SIGTERM one replica, wait for it to exit, start it again on the same port
        and wait until it is ready; returns its exit status and the end of its log
        as it stopped (to tell why, when it did not stop cleanly)."""
        code = gateway.stop(signal.SIGTERM)
        tail = gateway.log_path.read_text(errors="replace").splitlines()[-20:]
        gateway.start(ready_path="/readyz")
        return code, "\n".join(tail)

    def metric(self, gateway: ServiceProcess, name: str) -> float:
        """The value of an unlabelled series on a replica's own metrics port."""
        port = gateway.env["GATEWAY_METRICS_PORT"]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert found, f"{name} not in the metrics of {gateway.url}"
        return float(found.group(1))

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for gateway in self.gateways:
            gateway.stop()
        if self.auth is not None:
            self.auth.stop()
