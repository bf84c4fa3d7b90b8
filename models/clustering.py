"""Clustering steps in NumPy that the online models run over a sample of *current*
customers: k-means++ seeding, Lloyd rounds, the Davies–Bouldin criterion, choosing the
number of segments, and the sequential (online) k-means step. All functions are pure and
deterministic for a given ``rng``.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> z = np.concatenate([rng.normal(m, 0.2, size=(60, 2)) for m in (0.0, 3.0, 6.0)])
>>> best, scan = choose_k(z, k_min=2, k_max=5, n_init=3, rng=rng)
>>> best.k, best.score < 0.3, sorted(scan)
(3, True, [2, 3, 4, 5])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Solution:
    """One clustering of a sample."""

    centres: np.ndarray
    """Centres, shape ``(k, n_features)``."""
    labels: np.ndarray
    """Nearest centre of every sample row."""
    inertia: float
    """Sum of squared distances to the nearest centre."""
    score: float
    """Davies–Bouldin index (lower = more compact, better separated segments)."""

    @property
    def k(self) -> int:
        """Number of centres."""
        return len(self.centres)


@dataclass(frozen=True, slots=True)
class Sample:
    """Rows prepared once for many clusterings of them (a refresh runs ~40 Lloyd runs and
    ~200 k-means++ draws on one sample): each row's squared norm and the doubled rows, which
    :func:`sq_distances` otherwise recomputes for every call. The same arrays as it computes,
    so every distance is bit-for-bit the same."""

    z: np.ndarray
    norms: np.ndarray
    """``einsum("ij,ij->i", z, z)``."""
    twice: np.ndarray
    """``2.0 * z``."""
    rows: np.ndarray
    """``arange(len(z))``."""
    drawn: dict[tuple[bool, int], np.ndarray] = dataclasses.field(default_factory=dict)
    """Squared distances to a row drawn as a k-means++ centre, by (first centre, row): the
    starts of a refresh draw the same outlying rows again and again."""

    @staticmethod
    def of(z: np.ndarray | Sample) -> Sample:
        """``z`` prepared (itself when it already is)."""
        if isinstance(z, Sample):
            return z
        return Sample(z, np.einsum("ij,ij->i", z, z), 2.0 * z, np.arange(len(z)))

    def sq_distances(self, c: np.ndarray) -> np.ndarray:
        """:func:`sq_distances` of the rows to ``c`` (the same operations, in place)."""
        d2 = self.twice @ c.T
        np.subtract(self.norms[:, None], d2, out=d2)
        d2 += np.einsum("ij,ij->i", c, c)
        return np.maximum(d2, 0.0, out=d2)


def sq_distances(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape ``(len(z), len(c))``."""
    d2 = np.einsum("ij,ij->i", z, z)[:, None] - 2.0 * z @ c.T + np.einsum("ij,ij->i", c, c)
    return np.maximum(d2, 0.0)


def nearest(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every row (``sq_distances(z, c).argmin(1)`` without
    the rows' own norms, which do not change the order: half the work).

    >>> nearest(np.array([[0.0, 0.0], [4.0, 4.0]]), np.array([[5.0, 5.0], [1.0, 0.0]]))
    array([1, 0])
    """
    d = z @ c.T
    d *= 2.0  # in place: the same numbers as cc - 2.0 * (z @ c.T), one array fewer
    return np.subtract(np.einsum("ij,ij->i", c, c), d, out=d).argmin(1)


def online_step(c: np.ndarray, x: np.ndarray, step: float) -> int:
    """One sequential k-means step, as River's ``KMeans.learn_one`` takes it: the centre
    nearest to ``x`` moves ``step`` of the way towards it (``c`` changes in place).
    Returns that centre's index.

    >>> c = np.array([[0.0, 0.0], [4.0, 4.0]])
    >>> online_step(c, np.array([1.0, 0.0]), 0.5), c.tolist()
    (0, [[0.5, 0.0], [4.0, 4.0]])
    """
    k = int(((c - x) ** 2).sum(1).argmin())
    c[k] += step * (x - c[k])
    return k


def kmeans_pp(z: np.ndarray | Sample, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding."""
    s = Sample.of(z)
    z = s.z
    first = rng.integers(len(z))
    centres = [z[first]]
    # (a first centre's distances come from a copy of its row, the others' from a view:
    # cached apart, so that each is the product it always was)
    d2 = s.drawn.get((True, int(first)))
    if d2 is None:
        d2 = s.drawn[True, int(first)] = s.sq_distances(np.asarray(centres))[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        pick = rng.choice(len(z), p=d2 / total) if total > 0 else rng.integers(len(z))
        centres.append(z[pick])
        column = s.drawn.get((False, int(pick)))
        if column is None:
            column = s.drawn[False, int(pick)] = s.sq_distances(z[pick][None])[:, 0]
        d2 = np.minimum(d2, column)
    return np.asarray(centres)


def kmeans_pp_next(z: np.ndarray | Sample, c: np.ndarray, rng: np.random.Generator,
                   d2: np.ndarray | None = None) -> np.ndarray:
    """One more centre, drawn the k-means++ way (far from the centres ``c``); ``d2``: each
    row's squared distance to its nearest centre, when already known (several draws)."""
    s = Sample.of(z)
    if d2 is None:
        d2 = s.sq_distances(c).min(1)
    total = d2.sum()
    return s.z[rng.choice(len(d2), p=d2 / total) if total > 0 else rng.integers(len(d2))][None]


def lloyd(z: np.ndarray | Sample, c: np.ndarray,
          rounds: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd rounds from ``c``; a centre that ends up with no member is dropped (never moved
    elsewhere: its id must not come to mean another group). Returns ``(centres, kept)``, where
    ``kept`` indexes the input centres that survived, in order."""
    z = z.z if isinstance(z, Sample) else z
    c = c.copy()
    kept = np.arange(len(c))
    unit = np.eye(len(c))
    previous = None
    for _ in range(rounds):
        labels = nearest(z, c)
        if previous is not None and (labels == previous).all():
            break  # same members, same centres: converged
        counts = np.bincount(labels, minlength=len(c))
        # member sums as one small matrix product (np.add.at is ~10x slower here); the 0/1
        # member matrix as columns of the identity (a third faster than zeros + scatter)
        new = unit.take(labels, axis=1) @ z
        if counts.all():
            new /= counts[:, None]
        else:
            alive = counts > 0
            new[alive] /= counts[alive, None]
            c, kept, previous, unit = new[alive], kept[alive], None, np.eye(int(alive.sum()))
            continue
        # np.allclose(new, c, atol=1e-7), without its generality (a third of a round)
        if (np.abs(new - c) <= 1e-7 + 1e-5 * np.abs(c)).all():
            break
        c, previous = new, labels
    return c, kept


def davies_bouldin(z: np.ndarray, c: np.ndarray, labels: np.ndarray) -> float:
    """Davies–Bouldin index: mean over segments of the worst (spread_i + spread_j) / distance.

    >>> z = np.array([[0.0], [0.2], [5.0], [5.2]])
    >>> round(davies_bouldin(z, np.array([[0.1], [5.1]]), np.array([0, 0, 1, 1])), 3)
    0.04
    """
    k = len(c)
    if k < 2:
        return float("inf")
    # every row's distance to its centre at once (row by row the same sums), then each
    # segment's mean over its rows in order, as when computed segment by segment
    dist = np.sqrt(((z - c[labels]) ** 2).sum(1))
    spread = np.array([d.mean() if len(d) else 0.0 for d in (dist[labels == i]
                                                             for i in range(k))])
    d = np.sqrt(sq_distances(c, c))
    np.fill_diagonal(d, np.inf)
    ratio = (spread[:, None] + spread[None, :]) / np.maximum(d, 1e-12)
    return float(ratio.max(1).mean())


def _fit(s: Sample, c: np.ndarray, rounds: int) -> tuple[Solution, np.ndarray]:
    # Lloyd and inertia; the score is left NaN for the caller (see best_of)
    c, kept = lloyd(s.z, c, rounds)
    d2 = s.sq_distances(c)
    labels = d2.argmin(1)
    inertia = float(d2[s.rows, labels].sum())
    return Solution(c, labels, inertia, math.nan), kept


def solve(z: np.ndarray | Sample, c: np.ndarray,
          rounds: int = 30) -> tuple[Solution, np.ndarray]:
    """Lloyd from ``c`` and score the result; also returns which input centres survived."""
    s = Sample.of(z)
    sol, kept = _fit(s, c, rounds)
    return dataclasses.replace(sol, score=davies_bouldin(s.z, sol.centres, sol.labels)), kept


def best_of(z: np.ndarray | Sample, k: int, n_init: int, rng: np.random.Generator) -> Solution:
    """The lowest-inertia k-means solution of ``n_init`` k-means++ starts (scored)."""
    s = Sample.of(z)
    best: Solution | None = None
    for _ in range(n_init):
        sol, _ = _fit(s, kmeans_pp(s, k, rng), 30)
        if best is None or sol.inertia < best.inertia:
            best = sol
    assert best is not None
    # only the winner is scored: the index of the others is never read (a tenth of a refresh)
    return dataclasses.replace(best, score=davies_bouldin(s.z, best.centres, best.labels))


def choose_k(
    z: np.ndarray | Sample, k_min: int, k_max: int, n_init: int, rng: np.random.Generator
) -> tuple[Solution, dict[int, float]]:
    """The solution with the lowest Davies–Bouldin index for ``k`` in ``[k_min, k_max]``,
    and the index of every ``k`` tried."""
    s = Sample.of(z)
    k_max = min(k_max, len(s.z))
    if k_min >= k_max:
        sol = best_of(s, max(1, k_max), n_init, rng)
        return sol, {sol.k: sol.score}
    sols = [best_of(s, k, n_init, rng) for k in range(max(2, k_min), k_max + 1)]
    return min(sols, key=lambda s: s.score), {s.k: round(s.score, 4) for s in sols}
