"""The online segmentation model: River ``StandardScaler`` + ``KMeans``.

River learns (``learn_one`` on a bounded, deterministic sample of *current*
customer vectors per model update); assignment is vectorised with NumPy over
River's own scaler statistics and centres, so the hot path never pays a River
call per event. KMeans is seeded once with k-means++ on a warm-up sample,
because River's random Gaussian initial centres often leave clusters empty.

Checkpoints are plain JSON (no pickle): they carry the model version, River's
version and the feature schema, and a mismatch is refused.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> blobs = np.concatenate([rng.normal(m, 0.1, size=(100, len(FEATURE_NAMES)))
...                         for m in (0.0, 5.0)])
>>> m = SegmentModel(n_segments=2, warmup=200)
>>> m.learn(blobs.tolist())
True
>>> labels, confidence = m.assign(blobs)
>>> len(set(labels[:100].tolist())), len(set(labels[100:].tolist())), bool(labels[0] != labels[150])
(1, 1, True)
>>> bool(confidence.min() > 0.9)
True
>>> SegmentModel.from_checkpoint(m.checkpoint()).version == m.version
True
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import numpy as np
import river
from river import cluster, preprocessing

from models.features import FEATURE_NAMES, FEATURE_SCHEMA

CHECKPOINT_FORMAT = 1


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit this code (River version, features or format)."""


class SegmentModel:
    """Scaler + KMeans with k-means++ seeding, versioned updates and JSON checkpoints.

    Parameters
    ----------
    n_segments
        Number of KMeans clusters (segments).
    step
        River KMeans ``halflife``: the step size towards each learned point.
    warmup
        Distinct vectors gathered before seeding; no assignment happens before.
    learn_sample
        Most vectors learned per update (evenly spaced, so deterministic).
    seed
        Seed for k-means++ and River's KMeans.
    """

    def __init__(
        self,
        n_segments: int = 6,
        step: float = 0.02,
        warmup: int = 500,
        learn_sample: int = 256,
        seed: int = 42,
    ) -> None:
        if n_segments < 1 or warmup < n_segments:
            raise ValueError("need n_segments >= 1 and warmup >= n_segments")
        self.n_segments = n_segments
        self.step = step
        self.warmup = warmup
        self.learn_sample = learn_sample
        self.seed = seed
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = cluster.KMeans(n_clusters=n_segments, halflife=step, seed=seed)
        self.version = 0

    @property
    def ready(self) -> bool:
        """True once seeded; only a ready model assigns."""
        return self.version > 0

    # -- learning ---------------------------------------------------------------------------
    def learn(self, rows: list[list[float]], refresh: bool = False) -> bool:
        """Learn from model-space vectors of *current* customers; True when the version moved.

        Before the model is ready, ``rows`` must be a sample of at least ``warmup`` current
        customers; it seeds the model. With ``refresh``, a few Lloyd rounds start from the
        current centres over ``rows``: centres keep their identity (and so segment ids),
        while drifted or empty ones are pulled back to where customers are now.
        """
        if not rows:
            return False
        if not self.ready:
            if len(rows) < self.warmup:
                return False
            self._seed(np.asarray(rows, dtype=float))
            self.version = 1
            return True
        if refresh:
            data = np.asarray(rows, dtype=float)
            z = (data - self._means()) / self._stds()
            self._set_centres(self._lloyd(z, self.centres_scaled(), rounds=5))
        stride = max(1, -(-len(rows) // self.learn_sample))
        names = FEATURE_NAMES
        for row in rows[::stride]:
            x = dict(zip(names, row, strict=True))
            self.scaler.learn_one(x)
            self.kmeans.learn_one(self.scaler.transform_one(x))
        self.version += 1
        return True

    def _seed(self, data: np.ndarray) -> None:
        for row in data:
            self.scaler.learn_one(dict(zip(FEATURE_NAMES, row.tolist(), strict=True)))
        z = (data - self._means()) / self._stds()
        rng = np.random.default_rng(self.seed)
        centres = [z[rng.integers(len(z))]]
        for _ in range(1, self.n_segments):
            d2 = ((z[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
            total = d2.sum()
            pick = rng.choice(len(z), p=d2 / total) if total > 0 else rng.integers(len(z))
            centres.append(z[pick])
        self._set_centres(self._lloyd(z, np.asarray(centres), rounds=20))

    def _lloyd(self, z: np.ndarray, c: np.ndarray, rounds: int) -> np.ndarray:
        c = c.copy()
        for _ in range(rounds):
            d2 = ((z[:, None, :] - c[None]) ** 2).sum(-1)
            labels = d2.argmin(1)
            for k in range(self.n_segments):
                members = labels == k
                if members.any():
                    c[k] = z[members].mean(0)
                else:  # an empty centre restarts at the worst-served customer
                    worst = int(d2.min(1).argmax())
                    c[k] = z[worst]
                    d2[worst] = 0.0
        return c

    def _set_centres(self, c: np.ndarray) -> None:
        gauss = functools.partial(self.kmeans._rng.gauss, self.kmeans.mu, self.kmeans.sigma)
        for k in range(self.n_segments):
            centre: collections.defaultdict[str, float] = collections.defaultdict(gauss)
            centre.update(zip(FEATURE_NAMES, c[k].tolist(), strict=True))
            self.kmeans.centers[k] = centre

    # -- assignment -------------------------------------------------------------------------
    def _means(self) -> np.ndarray:
        return np.array([self.scaler.means[n] for n in FEATURE_NAMES])

    def _stds(self) -> np.ndarray:
        v = np.array([self.scaler.vars[n] for n in FEATURE_NAMES])
        return np.where(v > 1e-12, np.sqrt(np.maximum(v, 1e-12)), 1.0)

    def centres_scaled(self) -> np.ndarray:
        """Centres in scaled space, shape ``(n_segments, n_features)``."""
        return np.array(
            [[self.kmeans.centers[k][n] for n in FEATURE_NAMES] for k in range(self.n_segments)]
        )

    def centres_model_space(self) -> np.ndarray:
        """Centres mapped back to model space (before scaling)."""
        return self.centres_scaled() * self._stds() + self._means()

    def scale(self, rows: np.ndarray | list[list[float]]) -> np.ndarray:
        """Model-space rows standardised with the scaler's current statistics."""
        return (np.asarray(rows, dtype=float) - self._means()) / self._stds()

    def assign(self, rows: np.ndarray | list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre and a confidence in [0, 1] (1 - nearest/second-nearest distance)."""
        return self.assign_scaled(self.scale(rows))

    def assign_scaled(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`assign` for rows already :meth:`scale`-d."""
        d2 = ((z[:, None, :] - self.centres_scaled()[None]) ** 2).sum(-1)
        labels = d2.argmin(1)
        if self.n_segments == 1:
            return labels, np.ones(len(z))
        two = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])
        confidence = np.where(two[:, 1] > 0, 1.0 - two[:, 0] / np.maximum(two[:, 1], 1e-12), 1.0)
        return labels, np.clip(confidence, 0.0, 1.0)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the whole model."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": self.version,
            "river_version": river.__version__,
            "feature_schema": FEATURE_SCHEMA,
            "features": list(FEATURE_NAMES),
            "params": {
                "n_segments": self.n_segments,
                "step": self.step,
                "warmup": self.warmup,
                "learn_sample": self.learn_sample,
                "seed": self.seed,
            },
            "scaler": {
                "counts": [self.scaler.counts[n] for n in FEATURE_NAMES],
                "means": self._means().tolist(),
                "vars": [self.scaler.vars[n] for n in FEATURE_NAMES],
            },
            "centres": self.centres_scaled().tolist() if self.ready else None,
        }

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any]) -> SegmentModel:
        """Rebuild a model; raise :class:`CheckpointMismatch` when it does not fit this code."""
        if data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatch(f"checkpoint format {data.get('format')!r} is unknown")
        if data.get("river_version") != river.__version__:
            raise CheckpointMismatch(
                f"checkpoint was made with River {data.get('river_version')}, "
                f"this is River {river.__version__}"
            )
        if data.get("feature_schema") != FEATURE_SCHEMA:
            raise CheckpointMismatch(
                f"checkpoint feature schema {data.get('feature_schema')} is not {FEATURE_SCHEMA}"
            )
        m = cls(**data["params"])
        sc = data["scaler"]
        for i, n in enumerate(FEATURE_NAMES):
            m.scaler.counts[n] = sc["counts"][i]
            m.scaler.means[n] = sc["means"][i]
            m.scaler.vars[n] = sc["vars"][i]
        if data["centres"] is not None:
            m._set_centres(np.asarray(data["centres"], dtype=float))
        m.version = int(data["version"])
        return m
