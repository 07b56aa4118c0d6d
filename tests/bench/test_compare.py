"""`bench.compare`: two gateways on one bench stack, measured in alternating turns."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.compare import Figures, compare, env_pairs, start_variant, table, turns
from bench.stack import Stack
from tests.hostile.support import poll
from tests.support.processes import REPO


def test_turns_alternate_who_goes_first() -> None:
    assert turns(3) == [("A", "B"), ("B", "A"), ("A", "B")]


def test_settings_are_key_value_pairs() -> None:
    assert env_pairs(["LOG_LEVEL=warning", "X_1=a=b", "EMPTY="]) == {
        "LOG_LEVEL": "warning",
        "X_1": "a=b",
        "EMPTY": "",
    }
    for bad in ("LOG_LEVEL", "log_level=info", "=x", "1X=2"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            env_pairs([bad])


def test_table_shows_each_variant_and_the_change() -> None:
    a = Figures([2000, 1800, 2200], [0.9, 1.0], [1.5, 1.6, 1.7], [2.0])
    b = Figures([2400, 2000, 2200], [0.8, 0.9], [1.4], [2.1, 2.3])
    streams_only = {"A": Figures(burst_ttfb_ms=[1.0]), "B": Figures(burst_ttfb_ms=[2])}

    text = table({"openai": {"A": a, "B": b}, "claude": streams_only})

    openai_part, claude_part = text.split("\nclaude")
    assert "| requests/s at 50 connections (median round) | 2,000 | 2,200 |" in text
    assert "+200 (+10 %)" in openai_part
    assert "| p50 at 1 connection, ms | 0.950 | 0.850 | -0.100 |" in openai_part
    assert "| first byte, paced answer, ms | 2.000 | 2.200 | +0.200 |" in openai_part
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
        ports = {"A": stack.gateway_port, "B": variant.port}
        results = compare(
            stack,
            ports,
            rounds=2,
            seconds=1,
            streams_only=True,
            suites=("claude",),
            streams=(3, 1),
        )
        b_log = variant.logs()
    finally:
        variant.stop()

    assert ports["A"] != ports["B"]
    for figures in results["claude"].values():
        assert len(figures.burst_ttfb_ms) == 2 * 3
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
