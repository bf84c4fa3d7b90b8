"""Which counts a refresh judges (models.kmeans.SegmentModel): a settled count is judged
against its neighbours only, with every count judged now and then."""

from __future__ import annotations

import numpy as np

from models.algorithms import from_checkpoint
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


def test_counts_within_the_resolution_of_the_best_index_go_to_the_largest() -> None:
    # seeded on two groups, refreshed on four: the model leaves its count for the lowest
    # index (4); with a resolution wide enough to take in every count, for the largest
    exact = SegmentModel(min_segments=2, max_segments=6, warmup=300, confirm=1,
                         resolution=0.0)
    wide = SegmentModel(min_segments=2, max_segments=6, warmup=300, confirm=1,
                        resolution=10.0)
    for m in (exact, wide):
        assert m.learn(groups(2).tolist()) and m.n_segments == 2
        m.learn(groups(4).tolist(), refresh=True)
    assert exact.n_segments == 4
    assert wide.n_segments == 6
    # a count that has the lowest index stays: a larger one within the resolution is no
    # reason to move (the current count is judged against the candidate as before)
    settled = SegmentModel(min_segments=2, max_segments=6, warmup=300, confirm=1,
                           resolution=0.03)
    assert settled.learn(groups(4).tolist()) and settled.n_segments == 4
    settled.learn(groups(4).tolist(), refresh=True)
    assert settled.n_segments == 4


def test_a_checkpoint_keeps_the_resolution_and_an_older_one_gets_the_default() -> None:
    m = SegmentModel(min_segments=2, max_segments=6, warmup=300, resolution=0.05)
    assert m.learn(groups(4).tolist())
    doc = m.checkpoint()
    assert from_checkpoint(doc).params()["resolution"] == 0.05
    del doc["params"]["resolution"]
    assert from_checkpoint(doc).params()["resolution"] == 0.03
