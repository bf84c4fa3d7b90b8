"""Run the pure core over an event stream exactly as a worker does (minus I/O) and measure
what the evaluation reports need: flips per model update and the segment count at every
model version.

Examples
--------
>>> from models.simulator import ShopSimulator
>>> events = list(ShopSimulator(60, seed=2, days=6).history())
>>> run = run_online(events, SegmenterConfig(warmup=40, update_every=1000))
>>> run.dead, run.seg.model.ready, len(run.counts) == len(run.flips) + 1
(0, True, True)
>>> from models.features import FEATURE_NAMES
>>> ids, z = final_matrix(run.seg)
>>> z.shape == (len(ids), len(FEATURE_NAMES))
True
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from models.core import Record, Segmenter, SegmenterConfig
from models.features import to_model_matrix, vector

__all__ = ["OnlineRun", "final_matrix", "flips", "run_online"]


@dataclass(frozen=True, slots=True)
class OnlineRun:
    """What one pass of the core over a stream left behind."""

    seg: Segmenter
    """The core after the stream and a full re-scoring pass."""
    flips: list[float]
    """Share of quiet customers moved by each model update after the first."""
    counts: list[int]
    """Segment count at every model version (one entry per version seen)."""
    lifecycle: Counter[str]
    """Segment lifecycle events by kind (born, split, merged, retired)."""
    dead: int
    """Events refused (dead-lettered), e.g. late ones."""
    seconds: float
    """Time in the core (one thread)."""


def flips(seg: Segmenter, quiet: list[str]) -> float:
    """Share of ``quiet`` customers (no event since the previous model update) that the new
    model moves, features fixed as of their last event: what the background re-scoring
    would write with reason ``model_update``."""
    if not quiet:
        return 0.0
    z = seg.model.scale(to_model_matrix([vector(seg.states[c], seg.half_life_ms)
                                         for c in quiet]))
    current = [seg.states[c].segment for c in quiet]
    labels = seg.model.keep_current(z, seg.model.assign_scaled(z)[0], current,
                                    seg.config.sticky)
    new = [seg.model.ids[i] for i in labels]
    for c, sid in zip(quiet, new, strict=True):  # as the re-scoring pass would
        seg.states[c].segment = sid
    return float(np.mean([a != b for a, b in zip(current, new, strict=True)]))


def run_online(events: list[dict[str, Any]], cfg: SegmenterConfig, batch: int = 1000,
               model: Any = None) -> OnlineRun:
    """Feed ``events`` in batches of ``batch`` records (small enough that at most one model
    update falls in a batch with the default ``update_every``, so every version is seen);
    ``model``: start from this one instead of the configured kind."""
    recs = [Record("events", 0, i, e["customer_id"].encode(), orjson.dumps(e))
            for i, e in enumerate(events)]
    seg = Segmenter(cfg, model)
    out_flips: list[float] = []
    counts: list[int] = []
    lifecycle: Counter[str] = Counter()
    dead, elapsed, version = 0, 0.0, 0
    for i in range(0, len(recs), batch):
        was_ready = seg.model.ready
        touched = {r.key.decode() for r in recs[i:i + batch] if r.key}
        started = time.perf_counter()
        out = seg.apply(seg.parse(recs[i:i + batch]), {})
        seg.drain()
        elapsed += time.perf_counter() - started
        dead += len(out.dead)
        lifecycle.update(e["event"] for e in out.lifecycle)
        if seg.model.version != version:
            version = seg.model.version
            counts.append(seg.model.n_segments)
        if out.model_updated and was_ready:
            quiet = [c for c, s in seg.states.items() if s.segment and c not in touched]
            out_flips.append(flips(seg, quiet))
    started = time.perf_counter()
    seg.rescore(10**9)  # what the worker's background re-scoring does
    elapsed += time.perf_counter() - started
    return OnlineRun(seg, out_flips, counts, lifecycle, dead, elapsed)


def final_matrix(seg: Segmenter) -> tuple[list[str], np.ndarray]:
    """Customer ids and their features as of the watermark, standardised by the model's
    current scaler: the space the model clusters in."""
    ids = sorted(seg.states)
    x = to_model_matrix([vector(seg.states[c], seg.half_life_ms, seg.watermark) for c in ids])
    return ids, seg.model.scale(x)

