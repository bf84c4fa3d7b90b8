"""The default model: online k-means over standardised features, the number of segments
chosen by the Davies–Bouldin index, behind :class:`models.model.BaseModel`.

Each update takes sequential k-means steps towards a spaced part of the sample; a refresh
re-clusters the sample (:mod:`models.clustering`): for every count, k-means++ restarts
against the current centres after Lloyd rounds (and the same plus one centre); the count with
the lowest Davies-Bouldin index, the current one unless another is clearly better.

The step is River's ``KMeans.learn_one`` (nearest centre moves ``step`` of the way towards
the point), written here in NumPy (:func:`models.clustering.online_step`) because River's
KMeans cannot start from given centres through its public API, and its state could not be
saved without its private attributes. All state is our own arrays, so checkpoints restore
it exactly.

Examples
--------
>>> from models.features import FEATURE_NAMES
>>> rng = np.random.default_rng(1)
>>> blobs = np.concatenate([rng.normal(m, 0.1, size=(100, len(FEATURE_NAMES)))
...                         for m in (0.0, 4.0, 8.0)])
>>> m = SegmentModel(min_segments=2, max_segments=5, warmup=300)
>>> m.learn(blobs.tolist()), m.n_segments, m.criterion["name"]
(True, 3, 'davies_bouldin')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.clustering import Sample, best_of, choose_k, kmeans_pp_next, online_step, solve
from models.model import BaseModel

__all__ = ["SegmentModel"]


class SegmentModel(BaseModel):
    """Scaler + online k-means; the number of segments chosen by the Davies–Bouldin index.

    Parameters
    ----------
    min_segments, max_segments
        Bounds for the number of segments.
    step
        Step size towards each learned point (River KMeans' ``halflife``).
    warmup
        Distinct vectors gathered before seeding; no assignment happens before.
    learn_sample
        Most vectors learned per update (evenly spaced, so deterministic).
    n_init
        k-means++ starts per candidate count when seeding and at every refresh.
    hysteresis
        Relative improvement (Davies-Bouldin index) another count needs before a refresh
        moves to it.
    warm_margin
        Relative inertia a k-means++ restart must save over the current centres (after
        Lloyd rounds) before it replaces them at a refresh that keeps the count: a restart is
        a new partition, and every customer without new events it moves is a flip. The
        count itself is judged at each count's best fit (a restart then wins its count when it
        saves a fifth of ``hysteresis``).
    confirm
        Refreshes in a row that the same other count must win before the model moves to it:
        each refresh judges a new sample, and on a flat index (a real log of lapsed buyers)
        sampling noise alone made the count swing 4 -> 7 -> 4 one refresh apart.
    resolution
        Counts whose index is within this relative margin of the lowest one are judged
        equally good, and a refresh takes the largest of them as its candidate: differences
        that small are within the noise between two refresh samples, and the finer partition
        keeps more of the population's variance (a persona merged into another is the costly
        mistake: at seeds 2 and 4 of ``scripts.evaluate`` one row each ended a count short).
    settle, reach
        Once the count has held for ``settle`` refreshes, a refresh judges only the counts
        within ``reach`` of it (a count further away is reached step by step): the counts
        far from a settled one were 40-60% of a refresh's CPU and never won. Every
        ``2 * settle``-th refresh while settled still judges every count.
    """

    algorithm = "kmeans"

    def __init__(self, min_segments: int = 3, max_segments: int = 8, warmup: int = 500,
                 learn_sample: int = 256, seed: int = 42, min_share: float = 0.01,
                 step: float = 0.02, n_init: int = 6, hysteresis: float = 0.02,
                 confirm: int = 2, warm_margin: float = 0.02, settle: int = 3,
                 reach: int = 2, resolution: float = 0.03) -> None:
        super().__init__(min_segments, max_segments, warmup, learn_sample, seed, min_share)
        self.step, self.n_init, self.hysteresis = step, n_init, hysteresis
        self.confirm, self.warm_margin = confirm, warm_margin
        self.settle, self.reach, self.resolution = settle, reach, resolution
        self._pending = (0, 0)  # (count, refreshes in a row it won) while not yet taken
        self._held = 0  # refreshes in a row that kept the count

    def params(self) -> dict[str, Any]:
        return {**super().params(), "step": self.step, "n_init": self.n_init,
                "hysteresis": self.hysteresis, "confirm": self.confirm,
                "warm_margin": self.warm_margin, "settle": self.settle, "reach": self.reach,
                "resolution": self.resolution}

    def _state(self) -> dict[str, Any]:
        return {"pending": list(self._pending), "held": self._held}

    def _restore(self, state: dict[str, Any]) -> None:
        count, wins = state.get("pending") or (0, 0)
        self._pending = (int(count), int(wins))
        self._held = int(state.get("held", 0))

    def _judged(self, lo: int, hi: int) -> list[int]:
        """The counts a refresh judges: once settled, those within :attr:`reach` of the
        current one; else every count in bounds."""
        now = self.n_segments
        if self._held >= self.settle and self._held % (2 * self.settle):
            # (every 2 * settle-th refresh still judges all: a far count that became better
            # is not missed when the counts between are worse)
            return list(range(max(lo, now - self.reach), min(hi, now + self.reach) + 1))
        return list(range(lo, hi + 1))

    def _seed(self, data: np.ndarray) -> bool:
        z = self.scale(data)
        sol, scan = choose_k(z, self.min_segments, self.max_segments, self.n_init, self._rng)
        self._relabel(sol.centres, z)
        self._criterion(sol.score, scan)
        return True

    def _update(self, data: np.ndarray, refresh: bool) -> bool:
        if refresh:
            self._rescale(data)
            self._refresh(self.scale(data))
        # The online step over an evenly spaced part of the sample; each point scaled with
        # the statistics it has just updated (as River's scaler + KMeans did).
        centres = self._centres.copy()  # a new array: earlier snapshots may hold this one
        for x in self._spaced(data):
            self.scaler.learn_one(x)
            online_step(centres, self.scaler.transform(x), self.step)
        self._centres = centres
        return True

    def _refresh(self, z: np.ndarray) -> None:
        # For every count, the best k-means solution found: k-means++ restarts, and at the
        # current count (and one more) the current centres after Lloyd rounds, which keep
        # their ids. They win their count unless a restart fits clearly better: the segments
        # do not churn for a lucky start, but a stuck local optimum is left.
        # The rows' norms once for all ~40 Lloyd runs and ~200 k-means++ draws (same numbers).
        lo, hi, s = self.min_segments, min(self.max_segments, len(z)), Sample.of(z)
        best = {k: best_of(s, k, self.n_init, self._rng) for k in self._judged(lo, hi)}
        warm, _ = solve(s, self._centres)
        if lo <= warm.k <= hi and warm.k not in best:  # a centre emptied: judged as it is
            best[warm.k] = warm
        candidates = [warm]
        if warm.k + 1 in best:
            far = s.sq_distances(warm.centres).min(1)  # the same for every draw
            candidates.append(min(
                (solve(s, np.vstack([warm.centres,
                                     kmeans_pp_next(s, warm.centres, self._rng, far)]))[0]
                 for _ in range(self.n_init)), key=lambda sol: sol.inertia))
        for sol in candidates:
            if sol.k in best and sol.inertia <= best[sol.k].inertia * (1 + self.hysteresis / 5):
                best[sol.k] = sol
        # The count: lowest Davies-Bouldin index (the largest count within ``resolution``
        # of it), each count at its best solution; another count than the current one only
        # when clearly better.
        lowest = min(sol.score for sol in best.values())
        chosen = max((sol for sol in best.values()
                      if sol.score <= lowest * (1 + self.resolution)), key=lambda s: s.k)
        now = best.get(self.n_segments)
        if now is not None and chosen.score >= now.score * (1 - self.hysteresis):
            chosen = now
        if now is not None and chosen is not now:
            count, wins = self._pending
            wins = wins + 1 if count == chosen.k else 1
            if wins < self.confirm:
                self._pending, chosen = (chosen.k, wins), now
            else:
                self._pending = (0, 0)
        else:
            self._pending = (0, 0)
        if (chosen is not warm and chosen.k == warm.k
                and warm.inertia <= chosen.inertia * (1 + self.warm_margin)):
            # The count stays: the current partition stays too unless a restart fits clearly
            # better (the count was judged at the best fit found, as before).
            chosen = warm
        share = np.bincount(chosen.labels, minlength=chosen.k) / len(z)
        small = share < self.min_share
        if small.any() and chosen.k - int(small.sum()) >= lo:
            pruned, _ = solve(s, chosen.centres[~small])
            if pruned.k >= lo:  # Lloyd rounds can empty more centres
                chosen = pruned
        self._held = self._held + 1 if chosen.k == self.n_segments else 0
        self._relabel(chosen.centres, z)
        scan = {k: round(s.score, 4) for k, s in best.items()}
        scan[chosen.k] = round(chosen.score, 4)
        self._criterion(chosen.score, scan)

    def _criterion(self, value: float, scan: dict[int, float]) -> None:
        self.criterion = {"name": "davies_bouldin", "value": round(value, 4),
                          "segments": len(self.ids),
                          "by_count": {str(k): v for k, v in sorted(scan.items())}}
