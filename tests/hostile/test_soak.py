"""The soak run (scripts/soak.py): a short version in the normal suite, the two-minute
run behind `make soak` (or SUBGATE_SOAK=1 with the `slow` marker)."""

from __future__ import annotations

import os

import pytest

from scripts import soak


def test_soak_short_run_has_only_200_and_429_and_exact_counters() -> None:
    result = soak.run(seconds=8, users=8, gateways=2, parallel=8)

    assert result.statuses[200] > 0
    assert result.problems(check_rss=False) == []


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(
    not os.environ.get("SUBGATE_SOAK"),
    reason="two minutes; SUBGATE_SOAK=1 or make soak",
)
def test_soak_two_minutes() -> None:
    result = soak.run(seconds=120)

    assert result.problems() == []
