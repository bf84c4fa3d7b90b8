"""Per-feature standardisation with running statistics: what River's ``StandardScaler`` does
for our dense vectors, plus the two things River has no public API for, which the models
need: taking the statistics from a sample (a refresh re-fits the scaler to the current
population) and being saved as plain numbers (checkpoints that do not depend on River).

``learn_one`` is Welford's update, term for term as River 0.26's ``StandardScaler.learn_one``
(the same floating-point operations in the same order), so replacing River's scaler moved no
segment. The variance is the population variance (``ddof=0``).

Unknown values (NaN, :data:`models.features.UNKNOWN`) are left out of a feature's statistics
(its count says how many customers had it) and scale to 0, the feature's mean: a customer says
nothing about a feature they gave no signal for.

Examples
--------
>>> s = Standardizer(2)
>>> s.learn_many(np.array([[1.0, 10.0], [3.0, 10.0]]))
>>> s.means.tolist(), s.vars.tolist(), s.counts.tolist()
([2.0, 10.0], [1.0, 0.0], [2, 2])
>>> s.transform(np.array([[4.0, 10.0]])).tolist()  # a constant feature scales by 1, not 0
[[2.0, 0.0]]
>>> s.learn_one(np.array([np.nan, 13.0])); s.counts.tolist(), s.means.tolist()
([2, 3], [2.0, 11.0])
>>> s.transform(np.array([[np.nan, 11.0]])).tolist()  # unknown: the mean
[[0.0, 0.0]]
>>> Standardizer.from_dict(s.to_dict()).to_dict() == s.to_dict()
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Standardizer"]

_TINY_VAR = 1e-12
"""Below this variance a feature is taken as constant: divided by 1, not by ~0."""


class Standardizer:
    """Running count, mean and variance of each feature, and the scaling they give.

    Parameters
    ----------
    n_features
        Length of the vectors learned and scaled.
    """

    __slots__ = ("counts", "means", "vars")

    def __init__(self, n_features: int) -> None:
        self.counts = np.zeros(n_features, dtype=np.int64)
        self.means = np.zeros(n_features)
        self.vars = np.zeros(n_features)

    def learn_one(self, x: np.ndarray) -> None:
        """Welford's update with one vector (its known values)."""
        known = ~np.isnan(x)
        if not known.all():
            self._learn_part(x, known)
            return
        self.counts += 1
        old = self.means.copy()
        self.means += (x - old) / self.counts
        self.vars += ((x - old) * (x - self.means) - self.vars) / self.counts

    def _learn_part(self, x: np.ndarray, known: np.ndarray) -> None:
        n = self.counts[known] + 1
        old = self.means[known]
        v = x[known]
        self.counts[known] = n
        self.means[known] = old + (v - old) / n
        self.vars[known] += ((v - old) * (v - self.means[known]) - self.vars[known]) / n

    def learn_many(self, rows: np.ndarray) -> None:
        """:meth:`learn_one` for every row, in order."""
        for x in rows:
            self.learn_one(x)

    def fit(self, rows: np.ndarray) -> None:
        """Forget the past: the statistics become those of ``rows`` (their known values)."""
        known = ~np.isnan(rows)
        self.counts = known.sum(0).astype(np.int64)
        n = np.maximum(self.counts, 1)
        filled = np.where(known, rows, 0.0)
        self.means = filled.sum(0) / n
        self.vars = (np.where(known, rows - self.means, 0.0) ** 2).sum(0) / n

    def stds(self) -> np.ndarray:
        """Standard deviations, 1 for (near-)constant features."""
        v = self.vars
        return np.where(v > _TINY_VAR, np.sqrt(np.maximum(v, _TINY_VAR)), 1.0)

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (one vector or a matrix) standardised with the current statistics;
        unknown values become 0 (the mean)."""
        z = (rows - self.means) / self.stds()
        missing = np.isnan(z)
        if missing.any():
            z[missing] = 0.0
        return z

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain numbers, for a checkpoint."""
        return {"counts": self.counts.tolist(), "means": self.means.tolist(),
                "vars": self.vars.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[Any]]) -> Standardizer:
        """The inverse of :meth:`to_dict`."""
        s = cls(len(data["means"]))
        s.counts = np.asarray(data["counts"], dtype=np.int64)
        s.means = np.asarray(data["means"], dtype=float)
        s.vars = np.asarray(data["vars"], dtype=float)
        return s
