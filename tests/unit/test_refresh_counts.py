"""Which counts a refresh judges (models.kmeans.SegmentModel): a settled count is judged
against its neighbours only, with every count judged now and then."""

from __future__ import annotations

import numpy as np

from models.features import FEATURE_NAMES
from models.kmeans import SegmentModel

N = len(FEATURE_NAMES)
CORNERS = [np.eye(N)[0] * 6, np.eye(N)[1] * 6, -np.eye(N)[0] * 6, -np.eye(N)[1] * 6]


def groups(count: int, seed: int = 5) -> np.ndarray:
    """``count`` well separated groups of 300, spread in the first two columns only."""
    rng = np.random.default_rng(seed)
    rows = []
    for centre in CORNERS[:count]:
        noise = np.zeros((300, N))
        noise[:, :2] = rng.normal(0.0, 0.5, size=(300, 2))
        rows.append(noise + centre)
    return np.concatenate(rows)


def judged(m: SegmentModel) -> list[int]:
    """The counts the last refresh judged."""
    return sorted(int(k) for k in m.criterion["by_count"])


def test_a_settled_count_is_judged_against_its_neighbours_and_now_and_then_all() -> None:
    m = SegmentModel(min_segments=2, max_segments=8, warmup=300, settle=2, reach=1)
    data = groups(4).tolist()
    assert m.learn(data) and m.n_segments == 4
    scans = []
    for _ in range(6):
        m.learn(data, refresh=True)
        scans.append(judged(m))
        assert m.n_segments == 4
    every, near = list(range(2, 9)), [3, 4, 5]
    # held 0, 1: all; then 2, 3: neighbours; 4 (= 2 * settle): all; 5: neighbours
    assert scans == [every, every, near, near, every, near]
    restored = SegmentModel(**m.params())
    restored.load(m.checkpoint())  # how long the count has held survives a checkpoint
    m.learn(data, refresh=True)
    restored.learn(data, refresh=True)
    assert judged(m) == judged(restored) == near
    assert restored.params()["settle"] == 2 and restored.params()["reach"] == 1
