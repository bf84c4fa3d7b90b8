"""The density-based alternative: River's ``DBSTREAM`` behind the :class:`~models.model.
BaseModel` interface (setting ``SEGMENTER_ALGORITHM=dbstream``).

DBSTREAM keeps micro-clusters that fade over time and joins them into macro clusters through
their shared density, so the number of segments follows the data without a bound to tune and
odd-shaped groups stay whole. Its macro clusters are renumbered at every re-cluster, so their
centres are matched to the previous ones for stable ids (:mod:`models.lifecycle`); macro
clusters holding less than ``min_share`` of the sample are not segments (their customers go
to the nearest real one); at most ``max_segments`` of the heaviest are kept. Trade-offs
against KMeans are measured by ``scripts/evaluate.py`` (BENCHMARKS.md).

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
>>> from models.model import from_checkpoint
>>> from_checkpoint(m.checkpoint()).ids == m.ids
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from river import cluster

from models.clustering import davies_bouldin, sq_distances
from models.features import FEATURE_NAMES
from models.model import BaseModel

_N = len(FEATURE_NAMES)


class DensityModel(BaseModel):
    """Scaler + River DBSTREAM, macro clusters as segments.

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
        self.db = self._new_dbstream()

    def _new_dbstream(self) -> cluster.DBSTREAM:
        return cluster.DBSTREAM(clustering_threshold=self.radius, fading_factor=self.fading,
                                cleanup_interval=50, intersection_factor=self.intersection,
                                minimum_weight=1.0)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "radius": self.radius, "fading": self.fading,
                "intersection": self.intersection}

    def _seed(self, data: np.ndarray) -> bool:
        return self._cluster(data, data, relabel=True)

    def _update(self, data: np.ndarray, refresh: bool) -> bool:
        sample = data if refresh else self._spaced(data)
        self._learn_scaler(sample)
        # segments move at refreshes only: less churn
        return self._cluster(data, sample, relabel=refresh)

    def _cluster(self, data: np.ndarray, sample: np.ndarray, relabel: bool) -> bool:
        """DBSTREAM learns ``sample``; with ``relabel``, its macro clusters over ``data``
        become the segments (False when there are none yet)."""
        z = self.scale(data)
        for row in self.scale(sample).tolist():
            self.db.learn_one(dict(enumerate(row)))
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
        centres = self.db.centers
        if not centres:
            return np.zeros((0, _N))
        c = np.array([[centre.get(i, 0.0) for i in range(_N)] for centre in centres.values()])
        share = np.bincount(sq_distances(z, c).argmin(1), minlength=len(c)) / len(z)
        order = np.argsort(-share)
        keep = [i for i in order if share[i] >= self.min_share][: self.max_segments]
        if len(keep) < self.min_segments:
            keep = list(order[: max(self.min_segments, len(keep))])
        return c[sorted(keep)]

    def _state(self) -> dict[str, Any]:
        db = self.db
        return {
            "time_stamp": db._time_stamp,
            "micro": {str(i): [[mc.center.get(j, 0.0) for j in range(_N)], mc.last_update,
                               mc.weight] for i, mc in db._micro_clusters.items()},
            "s": {str(i): {str(j): v for j, v in row.items()} for i, row in db.s.items()},
            "s_t": {str(i): {str(j): v for j, v in row.items()} for i, row in db.s_t.items()},
        }

    def _restore(self, state: dict[str, Any]) -> None:
        from river.cluster.dbstream import DBSTREAMMicroCluster

        db = self.db = self._new_dbstream()
        if not state:
            return
        db._time_stamp = int(state["time_stamp"])
        db._micro_clusters = {
            int(i): DBSTREAMMicroCluster(x=dict(enumerate(c)), last_update=t, weight=w)
            for i, (c, t, w) in state["micro"].items()}
        db.s = {int(i): {int(j): v for j, v in row.items()} for i, row in state["s"].items()}
        db.s_t = {int(i): {int(j): v for j, v in row.items()}
                  for i, row in state["s_t"].items()}
        db.clustering_is_up_to_date = False
