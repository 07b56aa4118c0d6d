"""Garbage collection tuned once the service is built."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.server import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    built_at_start_up = [["settings"], ["registry"]]

    tune_gc()

    collected = gc.get_objects()  # every generation a collection looks at
    assert not any(o is built for o in collected for built in built_at_start_up)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
