"""The online segmentation models: River's ``StandardScaler`` with River ``KMeans`` (default,
:mod:`models.kmeans`) or River ``DBSTREAM`` (:mod:`models.density`), behind one interface
(:class:`BaseModel`, and :func:`from_checkpoint` for every algorithm).

Both learn from a bounded sample of *current* customers per update (never from the raw event
trajectory, which over-represents active customers and early-life states). Every few updates
a refresh re-clusters that sample: KMeans runs warm Lloyd rounds from its centres and, side by
side, k-means++ restarts for every number of segments in ``[min_segments, max_segments]``;
it moves to the restarts' best only when that is clearly better (Davies–Bouldin index for a
new count, inertia for the same count), so segments do not flap. Centres carry stable ids
(:mod:`models.lifecycle`), so ``s3`` means the same group across updates, workers and
restarts. Assignment is vectorised with NumPy; the hot path never calls River per event.

Checkpoints are plain JSON (no pickle): they carry the model version, River's version, the
algorithm and the feature schema, and a mismatch is refused.

Examples
--------
>>> from models.kmeans import SegmentModel
>>> rng = np.random.default_rng(0)
>>> blobs = np.concatenate([rng.normal(m, 0.1, size=(100, len(FEATURE_NAMES)))
...                         for m in (0.0, 5.0)])
>>> m = SegmentModel(min_segments=2, max_segments=4, warmup=200)
>>> m.learn(blobs.tolist())
True
>>> m.ids, [e["event"] for e in m.take_lifecycle()]
(['s0', 's1'], ['born', 'born'])
>>> labels, confidence = m.assign(blobs)
>>> len(set(labels[:100].tolist())), bool(labels[0] != labels[150])
(1, True)
>>> bool(confidence.min() > 0.9)
True
>>> m2 = from_checkpoint(m.checkpoint())
>>> m2.version == m.version and m2.ids == m.ids
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import river
from river import preprocessing

from models.features import FEATURE_NAMES, FEATURE_SCHEMA
from models.lifecycle import match_ids

CHECKPOINT_FORMAT = 2
STICKY = 0.1
"""A customer keeps their segment while its centre is within 10% of the nearest one
(distance); measured in scripts/evaluate.py: fewer flips per update, same ARI."""


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit this code (River version, features, algorithm)."""


class BaseModel:
    """What every algorithm shares: scaler, stable ids, versions, assignment, checkpoints."""

    algorithm = "base"

    def __init__(self, min_segments: int = 3, max_segments: int = 8, warmup: int = 500,
                 learn_sample: int = 256, seed: int = 42, min_share: float = 0.01) -> None:
        if not 1 <= min_segments <= max_segments or warmup < max_segments:
            raise ValueError("need 1 <= min_segments <= max_segments <= warmup")
        self.min_segments, self.max_segments = min_segments, max_segments
        self.warmup, self.learn_sample, self.seed = warmup, learn_sample, seed
        self.min_share = min_share
        self.scaler = preprocessing.StandardScaler()
        self.version = 0
        self.ids: list[str] = []
        self.next_id = 0
        self.criterion: dict[str, Any] = {}
        self._centres = np.zeros((0, len(FEATURE_NAMES)))
        self._lifecycle: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        """Segment names by id (set by the learner, carried in checkpoints so every worker
        shows the same names)."""
        self._rng = np.random.default_rng(seed)

    @property
    def ready(self) -> bool:
        """True once seeded; only a ready model assigns."""
        return self.version > 0

    @property
    def n_segments(self) -> int:
        """Current number of segments."""
        return len(self.ids)

    def take_lifecycle(self) -> list[dict[str, Any]]:
        """Lifecycle events since the last call (see :mod:`models.lifecycle`)."""
        out, self._lifecycle = self._lifecycle, []
        return out

    def learn(self, rows: list[list[float]], refresh: bool = False) -> bool:
        """Learn from model-space vectors of current customers; True when the version moved.

        Before the model is ready, ``rows`` must hold at least ``warmup`` customers: they fit
        the scaler and seed the segments. After, with ``refresh``, the sample is re-clustered.
        """
        if not rows:
            return False
        data = np.asarray(rows, dtype=float)
        if not self.ready:
            if len(rows) < self.warmup:
                return False
            self._learn_scaler(data)
            moved = self._seed(data)
        else:
            moved = self._update(data, refresh)
        if moved:
            self.version += 1
        return moved

    def _seed(self, data: np.ndarray) -> bool:
        """First segments from a warm-up sample (the scaler has learned it already)."""
        raise NotImplementedError

    def _update(self, data: np.ndarray, refresh: bool) -> bool:
        """One model update from a sample of current customers."""
        raise NotImplementedError

    def _spaced(self, data: np.ndarray) -> np.ndarray:
        """At most ``learn_sample`` evenly spaced rows (deterministic)."""
        return data[::max(1, -(-len(data) // self.learn_sample))]

    def _relabel(self, new: np.ndarray, z: np.ndarray) -> None:
        """Adopt ``new`` centres, carrying ids over from the current ones."""
        ids, events, self.next_id = match_ids(self.ids, self._centres, new, z, self.next_id)
        for e in events:
            e["model_version"] = self.version + 1
        self._lifecycle.extend(events)
        self.ids, self._centres = ids, new

    def _rescale(self, rows: np.ndarray) -> None:
        """Re-fit the scaler to this sample of current customers (the population as it is
        now, not as it has been since the start), keeping the centres where they are."""
        centres = self.centres_model_space()
        var = rows.var(0)
        for i, n in enumerate(FEATURE_NAMES):
            self.scaler.counts[n] = len(rows)
            self.scaler.means[n] = float(rows[:, i].mean())
            self.scaler.vars[n] = float(var[i])
        self._centres = self.scale(centres)

    def _learn_scaler(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            self.scaler.learn_one(dict(zip(FEATURE_NAMES, row, strict=True)))

    # -- assignment -------------------------------------------------------------------------
    def _means(self) -> np.ndarray:
        return np.array([self.scaler.means[n] for n in FEATURE_NAMES])

    def _stds(self) -> np.ndarray:
        v = np.array([self.scaler.vars[n] for n in FEATURE_NAMES])
        return np.where(v > 1e-12, np.sqrt(np.maximum(v, 1e-12)), 1.0)

    def centres_scaled(self) -> np.ndarray:
        """Centres in scaled space, shape ``(n_segments, n_features)``, in :attr:`ids` order."""
        return self._centres

    def centres_model_space(self) -> np.ndarray:
        """Centres mapped back to model space (before scaling)."""
        return self.centres_scaled() * self._stds() + self._means()

    def scale(self, rows: np.ndarray | list[list[float]]) -> np.ndarray:
        """Model-space rows standardised with the scaler's current statistics."""
        return (np.asarray(rows, dtype=float) - self._means()) / self._stds()

    def assign(self, rows: np.ndarray | list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre (index into :attr:`ids`) and a confidence in [0, 1]
        (1 - nearest / second-nearest distance)."""
        return self.assign_scaled(self.scale(rows))

    def assign_scaled(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`assign` for rows already :meth:`scale`-d."""
        labels, conf, _ = self.assign_with_distance(z)
        return labels, conf

    def keep_current(self, z: np.ndarray, labels: np.ndarray, current: list[str],
                     margin: float = STICKY) -> np.ndarray:
        """``labels``, except that a customer stays in their ``current`` segment while it is
        within ``margin`` (relative distance) of the nearest: model updates then move only
        customers who clearly belong elsewhere, not everyone near a boundary."""
        index = {sid: i for i, sid in enumerate(self.ids)}
        cur = np.array([index.get(s, -1) for s in current])
        known = cur >= 0
        if not known.any():
            return labels
        c = self.centres_scaled()
        rows = np.nonzero(known)[0]
        d_cur = np.sqrt(((z[rows] - c[cur[rows]]) ** 2).sum(1))
        d_best = np.sqrt(((z[rows] - c[labels[rows]]) ** 2).sum(1))
        out = labels.copy()
        stay = d_cur <= d_best * (1 + margin)
        out[rows[stay]] = cur[rows[stay]]
        return out

    def assign_with_distance(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`assign_scaled` plus the distance to the nearest centre."""
        c = self.centres_scaled()
        d2 = ((z[:, None, :] - c[None]) ** 2).sum(-1)
        labels = d2.argmin(1)
        if len(c) == 1:
            return labels, np.ones(len(z)), np.sqrt(d2[:, 0])
        two = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])
        confidence = np.where(two[:, 1] > 0, 1.0 - two[:, 0] / np.maximum(two[:, 1], 1e-12), 1.0)
        return labels, np.clip(confidence, 0.0, 1.0), two[:, 0]

    # -- checkpoints ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor arguments (stored in checkpoints)."""
        return {"min_segments": self.min_segments, "max_segments": self.max_segments,
                "warmup": self.warmup, "learn_sample": self.learn_sample, "seed": self.seed,
                "min_share": self.min_share}

    def _state(self) -> dict[str, Any]:
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        pass

    def checkpoint(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the whole model."""
        return {
            "format": CHECKPOINT_FORMAT,
            "algorithm": self.algorithm,
            "version": self.version,
            "river_version": river.__version__,
            "feature_schema": FEATURE_SCHEMA,
            "features": list(FEATURE_NAMES),
            "params": self.params(),
            "scaler": {
                "counts": [self.scaler.counts[n] for n in FEATURE_NAMES],
                "means": self._means().tolist(),
                "vars": [self.scaler.vars[n] for n in FEATURE_NAMES],
            },
            "ids": self.ids,
            "next_id": self.next_id,
            "centres": self._centres.tolist(),
            "criterion": self.criterion,
            "names": self.names,
            "state": self._state(),
        }


def from_checkpoint(data: dict[str, Any]) -> BaseModel:
    """Rebuild a model of any algorithm; raise :class:`CheckpointMismatch` when the
    checkpoint does not fit this code."""
    from models.density import DensityModel
    from models.kmeans import SegmentModel

    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"checkpoint format {data.get('format')!r} is not "
                                 f"{CHECKPOINT_FORMAT} (made by another Segmenter version)")
    if data.get("river_version") != river.__version__:
        raise CheckpointMismatch(f"checkpoint was made with River {data.get('river_version')}, "
                                 f"this is River {river.__version__}")
    if data.get("feature_schema") != FEATURE_SCHEMA:
        raise CheckpointMismatch(f"checkpoint feature schema {data.get('feature_schema')} "
                                 f"is not {FEATURE_SCHEMA}")
    kinds: dict[str, type[BaseModel]] = {"kmeans": SegmentModel, "dbstream": DensityModel}
    if data.get("algorithm") not in kinds:
        raise CheckpointMismatch(f"checkpoint algorithm {data.get('algorithm')!r} is unknown")
    m = kinds[data["algorithm"]](**data["params"])
    sc = data["scaler"]
    for i, n in enumerate(FEATURE_NAMES):
        m.scaler.counts[n] = sc["counts"][i]
        m.scaler.means[n] = sc["means"][i]
        m.scaler.vars[n] = sc["vars"][i]
    m.ids, m.next_id = list(data["ids"]), int(data["next_id"])
    m._centres = np.asarray(data["centres"], dtype=float).reshape(-1, len(FEATURE_NAMES))
    m.criterion = dict(data.get("criterion") or {})
    m.names = dict(data.get("names") or {})
    m.version = int(data["version"])
    m._restore(data.get("state") or {})
    return m
