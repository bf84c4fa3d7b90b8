"""Property-based fuzzing of the event contract through the pure core (no servers): every
bad message is dead-lettered with a reason, every good one is processed, nothing raises."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.core import Record, Segmenter, SegmenterConfig
from models.records import DeadLetter
from tests.fuzz import messages

TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nfuzz (pure core): {TRIED.total()} messages tried, {TRIED['valid']} valid; "
          f"invalid by kind: {dict(sorted((k, v) for k, v in TRIED.items() if k != 'valid'))}")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.lists(messages(), min_size=1, max_size=25))
def test_every_message_is_processed_or_dead_lettered(batch: list[tuple[str, bytes, bytes]]
                                                     ) -> None:
    seg = Segmenter(SegmenterConfig(warmup=3, update_every=5, min_segments=2,
                                    max_segments=3))
    recs = [Record("events", 0, i, key, value) for i, (_, key, value) in enumerate(batch)]
    parsed = seg.parse(recs)
    for (label, _, value), (_, out) in zip(batch, parsed, strict=True):
        TRIED[label] += 1
        if label == "valid":
            assert not isinstance(out, DeadLetter), (out.reason, value[:300])
        else:
            assert isinstance(out, DeadLetter), (label, value[:300])
            assert out.reason and out.record.value == value  # original bytes kept
    res = seg.apply(parsed, {})
    res.assignments += seg.drain()
    late = sum(n for (_, outcome), n in res.counts.items() if outcome == "late")
    assert len(res.dead) == sum(1 for label, _, _ in batch if label != "valid") + late
    assert res.counts.total() == len(batch)  # each counted once: processed, duplicate, ...
    for st_ in seg.states.values():  # features stay finite whatever the input
        assert all(math.isfinite(v) for v in st_.counters)
    assert all(0.0 <= a.confidence <= 1.0 for a in res.assignments)
