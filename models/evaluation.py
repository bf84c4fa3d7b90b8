"""Clustering agreement scores (pure NumPy, so the package needs no scikit-learn).

>>> adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0])
1.0
>>> round(adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]), 3)
-0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _contingency(a: Sequence[object], b: Sequence[object]) -> np.ndarray:
    _, ai = np.unique(np.asarray(a, dtype=str), return_inverse=True)
    _, bi = np.unique(np.asarray(b, dtype=str), return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def adjusted_rand_index(a: Sequence[object], b: Sequence[object]) -> float:
    """Adjusted Rand index of two labelings of the same items (1 = identical partitions)."""
    if len(a) != len(b) or not len(a):
        raise ValueError("labelings must be non-empty and of equal length")
    t = _contingency(a, b)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    n = len(a)
    index, ra, rb = pairs(t), pairs(t.sum(1)), pairs(t.sum(0))
    expected = ra * rb / (n * (n - 1) / 2)
    top = (ra + rb) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)
