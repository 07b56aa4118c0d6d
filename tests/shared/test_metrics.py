"""`labelled`: the remembered label children count exactly as `labels()` does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
