"""The drain in two steps of a flush in slices (stream.slices): the same writes as
``Segmenter.drain``, whether built at once or slice by slice, renamed segments included."""

from __future__ import annotations

import dataclasses

from models.core import Segmenter, SegmenterConfig
from stream.slices import drain_states, full_writes
from tests.unit.test_core import records

CFG = SegmenterConfig(warmup=300, update_every=1000, cache_size=150)


def test_drain_in_two_steps_writes_what_the_drain_writes() -> None:
    recs, _ = records(customers=300, days=8)
    one, two = Segmenter(CFG), Segmenter(dataclasses.replace(CFG))
    renamed = 0
    for i in range(0, len(recs), 700):
        for seg in (one, two):
            seg.apply(seg.parse(recs[i:i + 700]), {})
        renamed += len(one.cache.renamed)
        want = one.drain()
        states, again = drain_states(two)
        got = [a for k in range(0, len(states), 37)
               for a in full_writes(two, states[k:k + 37], again)]
        assert got == want
        assert list(two.cache.states) == list(one.cache.states)  # evicted alike
    assert renamed  # (model updates renamed segments: explained again)
