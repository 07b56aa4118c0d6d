"""Prometheus series of the contract, served on a separate port of each process."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "subgate_requests_total",
    "Requests answered, by route, status and provider.",
    ["service", "route", "status", "provider"],
)
LATENCY = Histogram(
    "subgate_request_duration_seconds",
    "Time from request to the end of the answer.",
    ["service", "route"],
    buckets=(
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
)
UPSTREAM_LATENCY = Histogram(
    "subgate_upstream_duration_seconds",
    "Time until the provider's answer headers arrived.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LIMITER_DECISIONS = Counter(
    "subgate_limiter_decisions_total",
    "Rate limiter decisions, by outcome.",
    ["decision"],
)
UPSTREAM_ERRORS = Counter(
    "subgate_upstream_errors_total",
    "Failed provider calls, by provider and kind.",
    ["provider", "kind"],
)
ACTIVE_STREAMS = Gauge(
    "subgate_active_streams",
    "Streamed answers being relayed right now.",
)
LOGINS = Counter(
    "subgate_logins_total",
    "Login attempts at /appstore, by outcome.",
    ["outcome"],
)


M = TypeVar("M", bound=MetricWrapperBase)
_children: dict[tuple[Any, ...], Any] = {}


def labelled(metric: M, *values: object) -> M:
    """`metric.labels(*values)`, remembered: prometheus-client validates the values
    and takes a lock on every `labels()` call, several times per request otherwise.
    Every label of ours has a small, fixed set of values."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics on its own port, never on the public one; 0 turns it off."""
    if port == 0:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        logger.warning("Metrics port %s:%d is not available: %s", host, port, exc)
