"""What every segmentation model shares (:class:`BaseModel`): the scaler
(:mod:`models.scaler`), stable segment ids, versions, vectorised assignment, and the
checkpoint format. The algorithms are :mod:`models.kmeans` (default) and
:mod:`models.density`; :mod:`models.algorithms` names them, builds them and reads their
checkpoints (this module imports neither).

Both learn from a bounded sample of *current* customers per update (never from the raw event
trajectory, which over-represents active customers and early-life states). Every few updates
a refresh re-clusters that sample: KMeans runs warm Lloyd rounds from its centres and, side by
side, k-means++ restarts for every number of segments in ``[min_segments, max_segments]``;
it moves to the restarts' best only when that is clearly better (Davies–Bouldin index for a
new count, inertia for the same count), so segments do not flap. Centres carry stable ids
(:mod:`models.lifecycle`), so ``s3`` means the same group across updates, workers and
restarts. Assignment is vectorised with NumPy; the hot path never calls River per event.

Checkpoints are plain JSON (no pickle) and hold only our own numbers: no River object or
River version is in them, so upgrading River keeps every segment id. They carry the model
version, the algorithm and the feature schema; a different checkpoint format, feature schema
or an unknown algorithm is refused (:func:`check_checkpoint`). Format 2 (which also named the
River version, then required to match exactly) is read as well: its numbers mean the same.
Examples are in :mod:`models.algorithms`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from models.features import FEATURE_NAMES, FEATURE_SCHEMA
from models.lifecycle import match_ids
from models.scaler import Standardizer

CHECKPOINT_FORMAT = 3
READABLE_FORMATS = (2, 3)
"""Formats :func:`check_checkpoint` accepts: 2 differs from 3 only by a River version field,
which is ignored."""
STICKY = 0.3
"""A customer without new events keeps their segment at a model update while its centre is
within 30% of the nearest one (distance, scaled space); the default of
:attr:`models.config.SegmenterConfig.sticky` (``SEGMENTER_STICKY``). Measured on the quality
matrix (``scripts.evaluate``, BENCHMARKS.md 2026-12-02): flips per update's p95 fell on every
row (with the refresh's ``warm_margin``), ARI at most 0.025 lower; 10% before."""


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit this code (format, features, algorithm)."""


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
        self.scaler = Standardizer(len(FEATURE_NAMES))
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
            self.scaler.learn_many(data)
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
        self.scaler.fit(rows)
        self._centres = self.scale(centres)

    # -- assignment -------------------------------------------------------------------------
    def centres_scaled(self) -> np.ndarray:
        """Centres in scaled space, shape ``(n_segments, n_features)``, in :attr:`ids` order."""
        return self._centres

    def centres_model_space(self) -> np.ndarray:
        """Centres mapped back to model space (before scaling)."""
        return self.centres_scaled() * self.scaler.stds() + self.scaler.means

    def scale(self, rows: np.ndarray | list[list[float]]) -> np.ndarray:
        """Model-space rows standardised with the scaler's current statistics."""
        return self.scaler.transform(np.asarray(rows, dtype=float))

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
        """A JSON-serialisable snapshot of the whole model (plain numbers only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "algorithm": self.algorithm,
            "version": self.version,
            "feature_schema": FEATURE_SCHEMA,
            "features": list(FEATURE_NAMES),
            "params": self.params(),
            "scaler": self.scaler.to_dict(),
            "ids": self.ids,
            "next_id": self.next_id,
            "centres": self._centres.tolist(),
            "criterion": self.criterion,
            "names": self.names,
            "random": _generator_state(self._rng),
            "state": self._state(),
        }

    def load(self, data: dict[str, Any]) -> None:
        """Take everything but the constructor arguments from a checkpoint that
        :func:`check_checkpoint` accepted for this algorithm."""
        self.scaler = Standardizer.from_dict(data["scaler"])
        self.ids, self.next_id = list(data["ids"]), int(data["next_id"])
        self._centres = np.asarray(data["centres"], dtype=float).reshape(-1, len(FEATURE_NAMES))
        self.criterion = dict(data.get("criterion") or {})
        self.names = dict(data.get("names") or {})
        self.version = int(data["version"])
        if data.get("random"):  # format 2 had none: the generator starts again from the seed
            _set_generator_state(self._rng, data["random"])
        self._restore(data.get("state") or {})


def _generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """NumPy's documented generator state, its 128-bit integers as text (JSON readers other
    than Python's may not take them as numbers)."""
    state = rng.bit_generator.state
    return {**state, "state": {k: str(v) for k, v in state["state"].items()}}


def _set_generator_state(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    """The inverse of :func:`_generator_state`; a state of another kind of generator (a
    future NumPy default) is ignored: only the random restarts' sequence differs then."""
    if saved.get("bit_generator") == rng.bit_generator.state["bit_generator"]:
        rng.bit_generator.state = {**saved,
                                   "state": {k: int(v) for k, v in saved["state"].items()}}


def check_checkpoint(data: dict[str, Any], algorithms: Collection[str]) -> None:
    """Raise :class:`CheckpointMismatch` unless ``data`` is a checkpoint this code reads: a
    known format, this feature schema, one of ``algorithms``. River's version is not checked:
    a checkpoint holds no River state, so a River upgrade keeps its segments.

    >>> ok = {"format": 3, "feature_schema": FEATURE_SCHEMA, "algorithm": "kmeans"}
    >>> check_checkpoint(ok, ["kmeans"])
    >>> check_checkpoint({**ok, "format": 1}, ["kmeans"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    models.model.CheckpointMismatch: checkpoint format 1 is not one of (2, 3) ...
    """
    if data.get("format") not in READABLE_FORMATS:
        raise CheckpointMismatch(f"checkpoint format {data.get('format')!r} is not one of "
                                 f"{READABLE_FORMATS} (made by another Segmenter version)")
    if data.get("feature_schema") != FEATURE_SCHEMA:
        raise CheckpointMismatch(f"checkpoint feature schema {data.get('feature_schema')} "
                                 f"is not {FEATURE_SCHEMA}")
    if data.get("algorithm") not in algorithms:
        raise CheckpointMismatch(f"checkpoint algorithm {data.get('algorithm')!r} is unknown "
                                 f"(known: {', '.join(sorted(algorithms))})")
