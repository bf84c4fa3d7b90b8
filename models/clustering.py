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
    return (np.einsum("ij,ij->i", c, c) - 2.0 * (z @ c.T)).argmin(1)


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


def kmeans_pp(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding."""
    centres = [z[rng.integers(len(z))]]
    d2 = sq_distances(z, np.asarray(centres))[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        pick = rng.choice(len(z), p=d2 / total) if total > 0 else rng.integers(len(z))
        centres.append(z[pick])
        d2 = np.minimum(d2, sq_distances(z, z[pick][None])[:, 0])
    return np.asarray(centres)


def kmeans_pp_next(z: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One more centre, drawn the k-means++ way (far from the centres ``c``)."""
    d2 = sq_distances(z, c).min(1)
    total = d2.sum()
    return z[rng.choice(len(z), p=d2 / total) if total > 0 else rng.integers(len(z))][None]


def lloyd(z: np.ndarray, c: np.ndarray, rounds: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd rounds from ``c``; a centre that ends up with no member is dropped (never moved
    elsewhere: its id must not come to mean another group). Returns ``(centres, kept)``, where
    ``kept`` indexes the input centres that survived, in order."""
    c = c.copy()
    kept = np.arange(len(c))
    rows = np.arange(len(z))
    previous = None
    for _ in range(rounds):
        labels = nearest(z, c)
        if previous is not None and np.array_equal(labels, previous):
            break  # same members, same centres: converged
        counts = np.bincount(labels, minlength=len(c))
        alive = counts > 0
        # member sums as one small matrix product (np.add.at is ~10x slower here)
        member = np.zeros((len(c), len(z)))
        member[labels, rows] = 1.0
        new = member @ z
        new[alive] /= counts[alive, None]
        if not alive.all():
            c, kept, previous = new[alive], kept[alive], None
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
    spread = np.array([
        np.sqrt(((z[labels == i] - c[i]) ** 2).sum(1)).mean() if (labels == i).any() else 0.0
        for i in range(k)])
    d = np.sqrt(sq_distances(c, c))
    np.fill_diagonal(d, np.inf)
    ratio = (spread[:, None] + spread[None, :]) / np.maximum(d, 1e-12)
    return float(ratio.max(1).mean())


def _fit(z: np.ndarray, c: np.ndarray, rounds: int) -> tuple[Solution, np.ndarray]:
    # Lloyd and inertia; the score is left NaN for the caller (see best_of)
    c, kept = lloyd(z, c, rounds)
    d2 = sq_distances(z, c)
    labels = d2.argmin(1)
    inertia = float(d2[np.arange(len(z)), labels].sum())
    return Solution(c, labels, inertia, math.nan), kept


def solve(z: np.ndarray, c: np.ndarray, rounds: int = 30) -> tuple[Solution, np.ndarray]:
    """Lloyd from ``c`` and score the result; also returns which input centres survived."""
    sol, kept = _fit(z, c, rounds)
    return dataclasses.replace(sol, score=davies_bouldin(z, sol.centres, sol.labels)), kept


def best_of(z: np.ndarray, k: int, n_init: int, rng: np.random.Generator) -> Solution:
    """The lowest-inertia k-means solution of ``n_init`` k-means++ starts (scored)."""
    best: Solution | None = None
    for _ in range(n_init):
        sol, _ = _fit(z, kmeans_pp(z, k, rng), 30)
        if best is None or sol.inertia < best.inertia:
            best = sol
    assert best is not None
    # only the winner is scored: the index of the others is never read (a tenth of a refresh)
    return dataclasses.replace(best, score=davies_bouldin(z, best.centres, best.labels))


def choose_k(
    z: np.ndarray, k_min: int, k_max: int, n_init: int, rng: np.random.Generator
) -> tuple[Solution, dict[int, float]]:
    """The solution with the lowest Davies–Bouldin index for ``k`` in ``[k_min, k_max]``,
    and the index of every ``k`` tried."""
    k_max = min(k_max, len(z))
    if k_min >= k_max:
        sol = best_of(z, max(1, k_max), n_init, rng)
        return sol, {sol.k: sol.score}
    sols = [best_of(z, k, n_init, rng) for k in range(max(2, k_min), k_max + 1)]
    return min(sols, key=lambda s: s.score), {s.k: round(s.score, 4) for s in sols}
