"""The density-based alternative: DBSTREAM behind the :class:`~models.model.BaseModel`
interface (setting ``SEGMENTER_ALGORITHM=dbstream``).

DBSTREAM keeps micro-clusters that fade over time and joins them into macro clusters through
their shared density, so the number of segments follows the data without a bound to tune and
odd-shaped groups stay whole. Its macro clusters are renumbered at every re-cluster, so their
centres are matched to the previous ones for stable ids (:mod:`models.lifecycle`); macro
clusters holding less than ``min_share`` of the sample are not segments (their customers go
to the nearest real one); at most ``max_segments`` of the heaviest are kept. Trade-offs
against KMeans are measured by ``scripts/evaluate.py`` (BENCHMARKS.md).

Why our own :class:`DBStream` and not River's ``DBSTREAM``: a model must survive a restart
through a JSON checkpoint, and River has no public way to save or restore a DBSTREAM (the
shared-density graph and the clock are internals). Rebuilding one by re-learning stored
micro-cluster centres loses the shared density, so the first re-cluster after a restart
would split segments into their micro-clusters; replaying the last thousand learned points
would make checkpoints several times larger and still not exact. :class:`DBStream` is River
0.26's algorithm in NumPy (the tests check it against River's) with plain-number state, so a
checkpoint restores it exactly, whatever River's version. One intended difference: when a
micro-cluster is removed, every shared density naming it goes too (River 0.26 can leave
some behind, for a later micro-cluster reusing its number to inherit).

Examples
--------
>>> rng = np.random.default_rng(1)
>>> blobs = np.concatenate([rng.normal(m, 0.05, size=(150, len(FEATURE_NAMES)))
...                         for m in (0.0, 3.0)])
>>> m = DensityModel(warmup=300, radius=1.5)
>>> m.learn(rng.permutation(blobs).tolist())
True
>>> m.ids
['s0', 's1']
>>> labels, _ = m.assign(blobs)
>>> len(set(labels[:150].tolist())), bool(labels[0] != labels[-1])
(1, True)
>>> from models.algorithms import from_checkpoint
>>> from_checkpoint(m.checkpoint()).ids == m.ids
True
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from models.clustering import davies_bouldin, sq_distances
from models.features import FEATURE_NAMES
from models.model import BaseModel

__all__ = ["DBStream", "DensityModel"]

_N = len(FEATURE_NAMES)


class DBStream:
    """DBSTREAM (Hahsler & Bolaños, IEEE TKDE 28(6), 2016) over dense vectors: online
    micro-cluster maintenance (:meth:`learn_one`) and re-clustering through the shared-density
    graph (:meth:`macro_centres`). Follows ``river.cluster.DBSTREAM`` 0.26 step for step.

    Parameters
    ----------
    radius
        Micro-cluster radius (River's ``clustering_threshold``).
    fading
        Weights halve every ``1 / fading`` learned points (``fading_factor``).
    cleanup_interval
        Learned points between two removals of weak micro-clusters and shared densities.
    intersection
        Shared density, relative to the two weights, that joins two micro-clusters
        (``intersection_factor``).
    minimum_weight
        Micro-clusters at or below this weight are noise.

    Examples
    --------
    >>> db = DBStream(radius=1.5, fading=0.05, cleanup_interval=4, intersection=0.5,
    ...               n_features=2)
    >>> for x in [[1, .5], [1, .625], [1, .75], [1, 1.125], [1, 1.5], [1, 1.75],
    ...           [4, 1.5], [4, 2.25], [4, 2.5], [4, 3], [4, 3.25], [4, 3.5]]:
    ...     db.learn_one(np.array(x, dtype=float))
    >>> db.macro_centres().round(2).tolist()  # as River's DBSTREAM on its own example
    [[1.0, 1.63], [4.0, 2.24]]
    """

    def __init__(self, radius: float = 1.0, fading: float = 0.01, cleanup_interval: int = 2,
                 intersection: float = 0.3, minimum_weight: float = 1.0, n_features: int = _N
                 ) -> None:
        self.radius, self.fading, self.cleanup_interval = radius, fading, cleanup_interval
        self.intersection, self.minimum_weight = intersection, minimum_weight
        self.t = 0
        """Points learned so far: the clock of all fading."""
        self.ids: list[int] = []
        """Micro-cluster numbers, in creation order (the order re-clustering visits them)."""
        self.centres = np.zeros((0, n_features))
        self.weights = np.zeros(0)
        self.last = np.zeros(0, dtype=np.int64)
        """When each micro-cluster last absorbed a point."""
        self.s: dict[int, dict[int, float]] = {}
        self.s_t: dict[int, dict[int, int]] = {}
        """Shared density ``s[i][j]`` (``i < j``: points near both) and when it last grew."""

    def learn_one(self, x: np.ndarray) -> None:
        """Absorb one point: the micro-clusters within ``radius`` gain weight and move
        towards it (unless that brings two of them within ``radius``), or a new one starts."""
        t, fade = self.t, self.fading
        d = np.sqrt(((self.centres - x) ** 2).sum(1))
        near = np.flatnonzero(d < self.radius)
        if len(near) == 0:
            self.ids.append(max(self.ids) + 1 if self.ids else 0)
            self.centres = np.vstack([self.centres, x])
            self.weights = np.append(self.weights, 1.0)
            self.last = np.append(self.last, t)
        else:
            old = self.centres[near]
            self.weights[near] = self.weights[near] * 2.0 ** (-fade * (t - self.last[near])) + 1
            sigma = self.radius / 3
            h = np.exp(-(d[near] * d[near]) / (2 * (sigma * sigma)))
            self.centres[near] = old + h[:, None] * (x - old)
            self.last[near] = t
            ids = [self.ids[k] for k in near]
            for i in ids:
                for j in ids:
                    if j > i:
                        s_i, s_t_i = self.s.setdefault(i, {}), self.s_t.setdefault(i, {})
                        s_i[j] = s_i[j] * 2.0 ** (-fade * (t - s_t_i[j])) + 1 if j in s_i else 1.0
                        s_t_i[j] = t
            # micro-clusters must not collapse: a pair moved within the radius goes back
            for a in range(len(near)):
                for b in range(a + 1, len(near)):
                    ka, kb = near[a], near[b]
                    if np.sqrt(((self.centres[ka] - self.centres[kb]) ** 2).sum()) < self.radius:
                        self.centres[ka], self.centres[kb] = old[a], old[b]
        self.t = t + 1
        if self.t % self.cleanup_interval == 0:
            self._cleanup()

    def _cleanup(self) -> None:
        """Drop micro-clusters and shared densities that faded below what one point per
        cleanup interval keeps up."""
        t, fade = self.t, self.fading
        weak_weight = 2.0 ** (-fade * self.cleanup_interval)
        weak = self.weights * 2.0 ** (-fade * (t - self.last)) < weak_weight
        gone = {self.ids[k] for k in np.flatnonzero(weak)}
        if gone:
            self.ids = [i for i in self.ids if i not in gone]
            self.centres, self.weights = self.centres[~weak], self.weights[~weak]
            self.last = self.last[~weak]
            for i in gone:
                self.s.pop(i, None)
                self.s_t.pop(i, None)
        threshold = self.intersection * weak_weight
        for i, s_i in self.s.items():
            s_t_i = self.s_t[i]
            # a faded entry is dropped (River zeroes it: the same to every later step)
            for j in [j for j, v in s_i.items()
                      if j in gone or v * 2.0 ** (-fade * (t - s_t_i[j])) < threshold]:
                del s_i[j], s_t_i[j]

    def macro_centres(self) -> np.ndarray:
        """Centres of the macro clusters: micro-clusters heavier than ``minimum_weight``
        joined when their shared density exceeds ``intersection``, each the weighted mean
        of its micro-clusters; shape ``(n_macro, n_features)``."""
        pos = {i: k for k, i in enumerate(self.ids)}
        w, floor = self.weights, self.minimum_weight
        joined: dict[int, list[int]] = {}  # i -> j > i, as River walks it
        for i, s_i in self.s.items():
            for j, v in s_i.items():
                if (i in pos and j in pos and w[pos[i]] > floor and w[pos[j]] > floor
                        and v / ((w[pos[i]] + w[pos[j]]) / 2) > self.intersection):
                    joined.setdefault(i, []).append(j)
        label: dict[int, int] = {}
        n_macro = 0
        for i in self.ids:
            if i in label or w[pos[i]] < floor:
                continue
            label[i] = n_macro
            todo = collections.deque(joined.get(i, ()))
            while todo:
                j = todo.popleft()
                if j not in label:
                    label[j] = n_macro
                    todo.extend(joined.get(j, ()))
            n_macro += 1
        centres = np.zeros((n_macro, self.centres.shape[1]))
        mass = np.zeros(n_macro)
        started = np.zeros(n_macro, dtype=bool)
        for i in self.ids:  # creation order, as River merges them
            if i not in label:
                continue
            m, k = label[i], pos[i]
            if not started[m]:
                centres[m], mass[m], started[m] = self.centres[k], w[k], True
            else:
                centres[m] = (centres[m] * mass[m] + self.centres[k] * w[k]) / (mass[m] + w[k])
                mass[m] += w[k]
        return centres

    def state(self) -> dict[str, Any]:
        """Plain numbers (checkpoint format 2's layout, which River's internals filled)."""
        return {
            "time_stamp": self.t,
            "micro": {str(i): [c, int(t), float(w)] for i, c, t, w in
                      zip(self.ids, self.centres.tolist(), self.last, self.weights,
                          strict=True)},
            "s": {str(i): {str(j): v for j, v in row.items()} for i, row in self.s.items()},
            "s_t": {str(i): {str(j): v for j, v in row.items()}
                    for i, row in self.s_t.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`state`."""
        micro = state["micro"]
        self.t = int(state["time_stamp"])
        self.ids = [int(i) for i in micro]
        self.centres = np.array([c for c, _, _ in micro.values()], dtype=float).reshape(
            len(micro), self.centres.shape[1])
        self.last = np.array([t for _, t, _ in micro.values()], dtype=np.int64)
        self.weights = np.array([w for _, _, w in micro.values()], dtype=float)
        self.s = {int(i): {int(j): float(v) for j, v in row.items()}
                  for i, row in state["s"].items()}
        self.s_t = {int(i): {int(j): int(v) for j, v in row.items()}
                    for i, row in state["s_t"].items()}


class DensityModel(BaseModel):
    """Scaler + :class:`DBStream`, macro clusters as segments.

    Parameters
    ----------
    radius
        DBSTREAM ``clustering_threshold``: micro-cluster radius in standard deviations.
    fading
        DBSTREAM ``fading_factor`` (per learned point).
    intersection
        DBSTREAM ``intersection_factor``: shared density that joins two micro-clusters.
    """

    algorithm = "dbstream"

    def __init__(self, min_segments: int = 1, max_segments: int = 8, warmup: int = 500,
                 learn_sample: int = 256, seed: int = 42, min_share: float = 0.03,
                 radius: float = 2.0, fading: float = 0.002,
                 intersection: float = 0.1) -> None:
        super().__init__(min_segments, max_segments, warmup, learn_sample, seed, min_share)
        self.radius, self.fading, self.intersection = radius, fading, intersection
        self.db = DBStream(radius=radius, fading=fading, cleanup_interval=50,
                           intersection=intersection, minimum_weight=1.0)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "radius": self.radius, "fading": self.fading,
                "intersection": self.intersection}

    def _seed(self, data: np.ndarray) -> bool:
        return self._cluster(data, data, relabel=True)

    def _update(self, data: np.ndarray, refresh: bool) -> bool:
        sample = data if refresh else self._spaced(data)
        self.scaler.learn_many(sample)
        # segments move at refreshes only: less churn
        return self._cluster(data, sample, relabel=refresh)

    def _cluster(self, data: np.ndarray, sample: np.ndarray, relabel: bool) -> bool:
        """DBSTREAM learns ``sample``; with ``relabel``, its macro clusters over ``data``
        become the segments (False when there are none yet)."""
        z = self.scale(data)
        for x in self.scale(sample):
            self.db.learn_one(x)
        if not relabel:
            return True
        macro = self._macro_centres(z)
        if len(macro) == 0:
            return False
        self._relabel(macro, z)
        labels = sq_distances(z, self._centres).argmin(1)
        self.criterion = {"name": "davies_bouldin",
                          "value": round(davies_bouldin(z, self._centres, labels), 4),
                          "segments": len(self.ids)}
        return True

    def _macro_centres(self, z: np.ndarray) -> np.ndarray:
        c = self.db.macro_centres()
        if len(c) == 0:
            return c
        share = np.bincount(sq_distances(z, c).argmin(1), minlength=len(c)) / len(z)
        order = np.argsort(-share)
        keep = [i for i in order if share[i] >= self.min_share][: self.max_segments]
        if len(keep) < self.min_segments:
            keep = list(order[: max(self.min_segments, len(keep))])
        return c[sorted(keep)]

    def _state(self) -> dict[str, Any]:
        return self.db.state()

    def _restore(self, state: dict[str, Any]) -> None:
        if state:
            self.db.restore(state)
