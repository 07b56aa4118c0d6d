"""`bench.compare`: two gateways on one bench stack, measured in alternating turns."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.compare import (
    Figures,
    MeasurementError,
    compare,
    env_pairs,
    require_no_errors,
    start_variant,
    table,
    turns,
)
from bench.stack import Stack
from tests.hostile.support import poll
from tests.support.processes import REPO, ServiceProcess
from tests.support.redis_server import free_port


def test_turns_alternate_who_goes_first() -> None:
    assert turns(3) == [("A", "B"), ("B", "A"), ("A", "B")]


def test_settings_are_key_value_pairs() -> None:
    assert env_pairs(["LOG_LEVEL=warning", "PROVIDERS_FILE=a=b", "LOG_FORMAT="]) == {
        "LOG_LEVEL": "warning",
        "PROVIDERS_FILE": "a=b",
        "LOG_FORMAT": "",
    }
    for bad in ("LOG_LEVEL", "=x", "1X=2", "LOG-LEVEL=info"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            env_pairs([bad])


def test_only_subgate_and_python_settings_are_taken() -> None:
    assert env_pairs(["JWTPrivateKey=x", "PYTHONMALLOC=malloc"]) == {
        "JWTPrivateKey": "x",
        "PYTHONMALLOC": "malloc",
    }
    with pytest.raises(ValueError, match="LOG_LEVL is not a Subgate setting"):
        env_pairs(["LOG_LEVL=warning"])


def test_a_run_with_errors_is_refused_with_what_the_gateway_answered() -> None:
    clean = {"requests": 900, "errors": 0, "error_kinds": {}}
    require_no_errors("B", clean, "")
    log = "\n".join(
        ['{"logger":"subgate.access","status":403}'] * 2
        + ['{"level":"warning","message":"Model not allowed"}']
    )
    failed = {"requests": 900, "errors": 2, "error_kinds": {"status": 2}}

    with pytest.raises(MeasurementError) as caught:
        require_no_errors("B", failed, log)

    message = str(caught.value)
    assert "gateway B answered 2 of 900 requests with errors" in message
    assert "{403: 2}" in message and "Model not allowed" in message


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--rounds", "3"], "--rounds must be even"),
        (["--rounds", "0"], "--rounds must be even"),
        (["--seconds", "0"], "--seconds must be at least 1"),
        (["--python", "/tmp"], "not an executable file"),
        (["--code", "/nonexistent"], "no gateway_service/ in it"),
        (["--env", "LOG_LEVEL=warning", "--env", "NOPE=1"], "NOPE is not a Subgate"),
    ],
)
def test_bad_arguments_stop_it_before_anything_starts(
    args: list[str], complaint: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert complaint in done.stderr
    assert "Traceback" not in done.stderr


def test_a_service_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = tmp_path / "sleeper"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    script.chmod(0o755)
    service = ServiceProcess(
        "nothing", {}, free_port(), tmp_path / "log", python=str(script)
    )

    with pytest.raises(TimeoutError):
        service.start(timeout=0.5)

    assert service.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_table_shows_each_variant_and_the_change() -> None:
    a = Figures([2000, 1800, 2200], [0.9, 1.0], [1.5, 1.6, 1.7], [3.0], [2.0])
    b = Figures([2400, 2000, 2200], [0.8, 0.9], [1.4], [2.5, 2.9], [2.1, 2.3])
    streams_only = {"A": Figures(burst_ttfb_ms=[1.0]), "B": Figures(burst_ttfb_ms=[2])}

    text = table({"openai": {"A": a, "B": b}, "claude": streams_only})

    openai_part, claude_part = text.split("\nclaude")
    assert "| requests/s at 50 connections (median of rounds) | 2,000 | 2,200 |" in text
    assert "+200 (+10 %)" in openai_part
    assert "| p50 at 1 connection, ms | 0.950 | 0.850 | -0.100 |" in openai_part
    assert "| first byte, paced answer, ms | 2.000 | 2.200 | +0.200 |" in openai_part
    assert "| total time, answer written at once, ms | 3.000 | 2.700 | -0.300 |" in (
        openai_part
    )
    assert "A [2000, 1800, 2200], B [2400, 2000, 2200]" in openai_part
    assert "| first byte, answer written at once, ms | 1.000 | 2.000 | +1.000 |" in (
        claude_part
    )
    assert "requests/s" not in claude_part and "paced" not in claude_part


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def test_both_gateways_are_measured_and_b_runs_its_own_settings(stack: Stack) -> None:
    variant = start_variant(stack, {"LOG_LEVEL": "warning"}, REPO, sys.executable)
    try:
        assert stack.gateway is not None
        gateways = {"A": stack.gateway, "B": variant}
        results = compare(
            stack,
            gateways,
            rounds=2,
            seconds=1,
            streams_only=True,
            suites=("claude",),
            streams=(3, 1),
        )
        b_log = variant.logs()
    finally:
        variant.stop()

    assert gateways["A"].port != gateways["B"].port
    for figures in results["claude"].values():
        assert len(figures.burst_ttfb_ms) == len(figures.burst_total_ms) == 2 * 3
        assert len(figures.paced_ttfb_ms) == 2 * 1
        assert all(0 < ms < 1000 for ms in figures.burst_ttfb_ms)
        assert figures.c50_rps == []
    # Each served its own streams (a warm-up, three bursts and a paced one per
    # round); A logged its own, B with LOG_LEVEL=warning none.
    gateway = stack.gateway
    assert gateway is not None
    access = '"logger":"subgate.access","message":"POST /v1/chat/completions 200"'
    assert poll(lambda: gateway.logs().count(access) == 2 * (1 + 3 + 1))
    assert access not in b_log
