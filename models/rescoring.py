"""Why a customer without a new event changes segment: the model moved, or time passed.

Pure functions over the model and standardised feature rows; :meth:`models.core.Segmenter.
rescore` feeds them the customers of its re-scoring pass, and the learner's sample comes from
:func:`population_sample`.

Examples
--------
>>> import numpy as np
>>> from models.kmeans import SegmentModel
>>> m = SegmentModel(min_segments=2, max_segments=2, warmup=2)
>>> m.ids, m._centres, m.version = ["s0", "s1"], np.array([[0.0] * 18, [4.0] * 18]), 1
>>> then = np.array([[0.1] * 18, [3.9] * 18, [2.8] * 18])  # as of the last event
>>> now = np.array([[0.1] * 18, [0.2] * 18, [2.8] * 18])   # as of now: the second faded
>>> [(i, m.ids[label], reason) for i, label, reason, _ in moves(m, then, now,
...                                                               ["s0", "s1", "s0"])]
[(1, 's0', 'time'), (2, 's1', 'model_update')]
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np

from models.features import to_model_matrix, vector
from models.model import STICKY, BaseModel
from models.state import CustomerState

__all__ = ["moves", "population_sample"]


def moves(model: BaseModel, then: np.ndarray, now: np.ndarray, current: list[str],
          margin: float = STICKY) -> list[tuple[int, int, str, float]]:
    """``(row, new label, reason, confidence)`` for every customer who should move.

    The model moved a customer (reason ``model_update``) when, as of their last event
    (``then``), it places them elsewhere even with the stickiness of
    :meth:`BaseModel.keep_current` (so model updates move only those who clearly belong
    elsewhere). Time moved them (reason ``time``) when decay changed their nearest segment
    between their last event and ``now``: stickiness guards against model updates, not
    against time.
    """
    near_then, _ = model.assign_scaled(then)
    kept_then = model.keep_current(then, near_then, current, margin)
    near_now, conf = model.assign_scaled(now)
    kept_now = model.keep_current(now, near_now, current, margin)
    ids, out = model.ids, []
    for i, seg in enumerate(current):
        if ids[kept_then[i]] != seg:
            label, reason = int(kept_now[i]), "model_update"
        elif near_now[i] != near_then[i]:
            label, reason = int(near_now[i]), "time"
        else:
            continue
        if ids[label] != seg:
            out.append((i, label, reason, round(float(conf[i]), 4)))
    return out


def population_sample(states: Iterable[CustomerState], n: int, now: int, half_life_ms: float,
                      active_ms: float, rng: random.Random) -> list[list[float]]:
    """Model-space vectors, as of ``now``, of up to ``n`` customers active within
    ``active_ms`` (0: all of them; the population as it is now, which is what the model
    should learn)."""
    cut = now - active_ms if active_ms > 0 else -(1 << 62)
    pool = list(states)
    active: list[CustomerState] = []
    if len(pool) > 8 * n:  # a small sample of a big cache (most updates): draw, then filter
        # the first n active ones of a random draw are a uniform sample of the active ones
        active = [s for s in rng.sample(pool, 2 * n) if s.last_ts >= cut][:n]
    if len(active) < n:
        active = [s for s in pool if s.last_ts >= cut]
        if len(active) > n:
            active = rng.sample(active, n)
    rows = [vector(s, half_life_ms, now) for s in active]
    return to_model_matrix(rows).tolist() if rows else []
