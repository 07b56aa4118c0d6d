"""Smoke test of `make run` itself: it starts, /readyz answers, Ctrl-C stops everything.

The stack runs from the repository on free ports with its own `.env` and data folder
(SUBGATE_ENV_FILE, SUBGATE_DATA_DIR), so it cannot clash with a developer's running one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTED = re.compile(r"^stack +\| started (\w+) \(pid (\d+)\)$")
START_DEADLINE = 60.0
STOP_DEADLINE = 45.0

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


class Output:
    """Collects a process's output lines on a thread, so nothing blocks the pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> str:
        self._thread.join(10)
        return "\n".join(self.lines)

    def pids(self) -> dict[str, int]:
        found = (STARTED.search(line) for line in list(self.lines))
        return {m.group(1): int(m.group(2)) for m in found if m}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def groups_gone(pgids: list[int], timeout: float = 10.0) -> bool:
    """Killed processes linger as zombies until reaped; poll until they are gone."""
    deadline = time.monotonic() + timeout
    while any(group_alive(pgid) for pgid in pgids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    auth_port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.update(
        SUBGATE_ENV_FILE=str(tmp_path / "env"),
        SUBGATE_DATA_DIR=str(tmp_path / "data"),
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        AUTH_PORT=str(auth_port),
        AUTH_URL=f"http://127.0.0.1:{auth_port}",
        GATEWAY_PORT=str(gateway_port),
        AUTH_METRICS_PORT=str(free_port()),
        GATEWAY_METRICS_PORT=str(free_port()),
    )
    return env


@pytest.fixture
def make_run(
    stack_env: dict[str, str],
) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    subprocess.run(["make", "install"], cwd=ROOT, env=stack_env, check=True)
    process = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=stack_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    try:
        yield process, output
    finally:
        for pid in [process.pid, *output.pids().values()]:
            if group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        process.wait(10)
        output.join()
        if process.stdout:
            process.stdout.close()


def wait_ready(process: subprocess.Popen[str], output: Output, url: str) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while not ready(url):
        if process.poll() is not None:
            pytest.fail(f"make run exited early:\n{output.join()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{url} never answered 200:\n{output.join()}")
        time.sleep(0.1)


def test_make_run_starts_answers_and_stops_on_ctrl_c(
    make_run: tuple[subprocess.Popen[str], Output], stack_env: dict[str, str]
) -> None:
    process, output = make_run
    gateway = f"http://127.0.0.1:{stack_env['GATEWAY_PORT']}"

    wait_ready(process, output, f"{gateway}/readyz")
    children = output.pids()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    process.wait(STOP_DEADLINE)
    log = output.join()

    assert set(children) == {"redis", "auth", "gateway"}, log
    assert "all processes stopped" in log, log
    assert groups_gone([process.pid, *children.values()]), log
    assert "JWT_SECRET=" in Path(stack_env["SUBGATE_ENV_FILE"]).read_text()
    assert (Path(stack_env["SUBGATE_DATA_DIR"]) / "redis" / "appendonlydir").is_dir()


def test_make_run_stops_everything_and_fails_when_a_service_dies(
    make_run: tuple[subprocess.Popen[str], Output], stack_env: dict[str, str]
) -> None:
    process, output = make_run
    gateway = f"http://127.0.0.1:{stack_env['GATEWAY_PORT']}"

    wait_ready(process, output, f"{gateway}/readyz")
    children = output.pids()
    os.kill(children["gateway"], signal.SIGKILL)
    code = process.wait(STOP_DEADLINE)
    log = output.join()

    assert code != 0, log
    assert "gateway exited with code -9; stopping" in log, log
    assert groups_gone([process.pid, *children.values()]), log
