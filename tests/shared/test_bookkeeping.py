"""Per-request bookkeeping made cheap stays exact: remembered label children count as
`labels()` does, and log times formatted once a second are right."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter

from shared.logs import _iso_time
from shared.metrics import labelled


def test_labelled_counts_into_the_same_series_as_labels() -> None:
    registry = CollectorRegistry()
    counter = Counter("demo_total", "Demo.", ["route", "status"], registry=registry)

    for _ in range(3):
        labelled(counter, "/v1/models", 200).inc()
    labelled(counter, "/v1/models", 404).inc()
    counter.labels("/v1/models", "200").inc()

    def value(status: str) -> float | None:
        labels = {"route": "/v1/models", "status": status}
        return registry.get_sample_value("demo_total", labels)

    assert value("200") == 4
    assert value("404") == 1
    assert labelled(counter, "/v1/models", 200) is counter.labels("/v1/models", "200")


def test_log_times_are_right_across_seconds() -> None:
    stamps = [
        0.0,
        1.9995,
        1767225600.123,
        1767225600.999,
        1767225601.0005,
        1767225600.5,
    ]
    for stamp in stamps:
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
        assert _iso_time(stamp) == f"{whole}.{int(stamp * 1000) % 1000:03d}Z"
