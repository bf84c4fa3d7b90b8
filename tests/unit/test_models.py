"""The models' own numerics (scaler, online k-means step, DBSTREAM) against River's, which
they replace, and checkpoints: exact round trips, River upgrades, old formats, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import river
from river import cluster, preprocessing

from models.algorithms import ALGORITHMS, from_checkpoint, make_model, model_for
from models.clustering import online_step
from models.config import SegmenterConfig
from models.density import DBStream, DensityModel
from models.features import FEATURE_NAMES, FEATURE_SCHEMA
from models.kmeans import SegmentModel
from models.model import BaseModel, CheckpointMismatch
from models.scaler import Standardizer

D = len(FEATURE_NAMES)
RIVER_026 = pytest.mark.skipif(
    not river.__version__.startswith("0.26."),
    reason="the reference is River 0.26, which these replacements follow step for step")


def drifting(n_phases: int, per_phase: int, seed: int = 0, dim: int = D) -> np.ndarray:
    """Groups that come and go (so old micro-clusters fade and are removed)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, size=(6, dim))
    rows = [rng.normal(means[rng.choice(rng.choice(6, 3, replace=False))], 1.0)
            for _ in range(n_phases) for _ in range(per_phase)]
    return np.array(rows)


@RIVER_026
def test_standardizer_is_rivers_standard_scaler() -> None:
    rows = drifting(2, 300) * [10.0 ** (i % 5 - 2) for i in range(D)]
    ours, theirs = Standardizer(D), preprocessing.StandardScaler()
    for x in rows:
        ours.learn_one(x)
        theirs.learn_one(dict(enumerate(x.tolist())))
        scaled = theirs.transform_one(dict(enumerate(x.tolist())))
        assert np.allclose(ours.transform(x), [scaled[i] for i in range(D)], rtol=1e-14,
                           atol=0)  # np.sqrt and ** 0.5 may differ in the last bit
    assert ours.means.tolist() == [theirs.means[i] for i in range(D)]
    assert ours.vars.tolist() == [theirs.vars[i] for i in range(D)]


def test_standardizer_fit_takes_the_samples_statistics() -> None:
    rows = drifting(1, 200)
    s = Standardizer(D)
    s.learn_many(drifting(1, 50, seed=9))
    s.fit(rows)
    z = s.transform(rows)
    assert np.allclose(z.mean(0), 0) and np.allclose(z.std(0), 1)
    assert s.counts.tolist() == [200] * D


@RIVER_026
def test_online_step_is_rivers_kmeans_learn_one() -> None:
    rows = drifting(2, 300, seed=2)
    centres = rows[:5].copy()
    km = cluster.KMeans(n_clusters=5, halflife=0.02, seed=1)
    for k in range(5):  # River has no API to start from given centres; its dicts are public
        km.centers[k].update(enumerate(centres[k].tolist()))
    for x in rows[5:]:
        expected = km.predict_one(dict(enumerate(x.tolist())))
        km.learn_one(dict(enumerate(x.tolist())))
        assert online_step(centres, x, 0.02) == expected
    assert np.array_equal(centres, [[km.centers[k][i] for i in range(D)] for k in range(5)])


@RIVER_026
@pytest.mark.parametrize(("fading", "cleanup"), [(0.002, 50), (0.01, 10)])
def test_dbstream_is_rivers_dbstream(fading: float, cleanup: int) -> None:
    rows = drifting(6, 500, seed=3) * 0.6
    ours = DBStream(radius=2.0, fading=fading, cleanup_interval=cleanup, intersection=0.1)
    theirs = cluster.DBSTREAM(clustering_threshold=2.0, fading_factor=fading,
                              cleanup_interval=cleanup, intersection_factor=0.1)
    removed = set()
    for n, x in enumerate(rows):
        before = set(ours.ids)
        ours.learn_one(x)
        theirs.learn_one(dict(enumerate(x.tolist())))
        removed |= before - set(ours.ids)
        if n % 250 == 249:
            micro = theirs.micro_clusters
            assert ours.ids == list(micro)
            assert np.allclose(ours.centres, [[m.center[i] for i in range(D)]
                                              for m in micro.values()], rtol=0, atol=1e-12)
            assert np.allclose(ours.weights, [m.weight for m in micro.values()], atol=1e-12)
            macro = [[c[i] for i in range(D)] for c in theirs.centers.values()]
            assert len(macro) > 1 and np.allclose(ours.macro_centres(), macro, atol=1e-12)
    assert removed, "the stream should make micro-clusters fade away"


def trained(algorithm: str) -> BaseModel:
    """A model seeded and then updated (with one refresh) on a drifting population."""
    rows = drifting(4, 400, seed=4) * 0.4
    extra: dict[str, Any] = {"radius": 1.5} if algorithm == "dbstream" else {}
    m = make_model(algorithm, min_segments=2, max_segments=6, warmup=400, learn_sample=64,
                   **extra)
    assert m.learn(rows[:400].tolist())
    for i, chunk in enumerate(np.split(rows[400:], 6)):
        m.learn(chunk.tolist(), refresh=i == 3)
    return m


def same_model(a: BaseModel, b: BaseModel, rows: np.ndarray) -> None:
    assert a.ids == b.ids and a.version == b.version and a.names == b.names
    la, ca = a.assign(rows)
    lb, cb = b.assign(rows)
    assert np.array_equal(la, lb) and np.array_equal(ca, cb)
    assert a.checkpoint() == b.checkpoint()


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_checkpoints_round_trip_exactly(algorithm: str) -> None:
    m = trained(algorithm)
    m.names = {m.ids[0]: "First"}
    m.take_lifecycle()  # events not yet taken are not part of a checkpoint
    back = from_checkpoint(json.loads(json.dumps(m.checkpoint())))
    assert type(back) is type(m)
    probe = drifting(2, 300, seed=5) * 0.4
    same_model(m, back, probe)
    # not only the assignments: learning goes on exactly as if there had been no restart
    for i, chunk in enumerate(np.split(drifting(2, 300, seed=6) * 0.4, 3)):
        assert m.learn(chunk.tolist(), refresh=i == 1) == back.learn(chunk.tolist(),
                                                                     refresh=i == 1)
        assert m.take_lifecycle() == back.take_lifecycle()
    same_model(m, back, probe)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_river_upgrade_keeps_segments(algorithm: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    m = trained(algorithm)
    text = json.dumps(m.checkpoint())
    assert "river" not in text.lower()  # only our own numbers
    monkeypatch.setattr(river, "__version__", "0.27.0")
    probe = drifting(2, 300, seed=7) * 0.4
    same_model(m, from_checkpoint(json.loads(text)), probe)


def test_mismatched_checkpoints_are_refused() -> None:
    cp = SegmentModel(min_segments=2, max_segments=2, warmup=2).checkpoint()
    for bad, message in [({"format": 1}, "format 1"), ({"format": 4}, "format 4"),
                         ({"feature_schema": "other"}, "feature schema"),
                         ({"algorithm": "pickle"}, "algorithm 'pickle' is unknown")]:
        with pytest.raises(CheckpointMismatch, match=message):
            from_checkpoint({**cp, **bad})


@RIVER_026
def test_format_2_checkpoints_are_read() -> None:
    """Format 2 held River's DBSTREAM internals and River's version: the numbers mean the
    same, so a model restored from one goes on as River's would have."""
    rows = drifting(3, 400, seed=8) * 0.6
    db = cluster.DBSTREAM(clustering_threshold=2.0, fading_factor=0.002, cleanup_interval=50,
                          intersection_factor=0.1, minimum_weight=1.0)
    for x in rows[:800]:
        db.learn_one(dict(enumerate(x.tolist())))
    m = DensityModel()
    old = {**m.checkpoint(), "format": 2, "river_version": "0.26.1",
           "scaler": {"counts": [7] * D, "means": [0.5] * D, "vars": [2.0] * D},
           "state": {  # as format 2's writer read them from River
               "time_stamp": db._time_stamp,
               "micro": {str(i): [[mc.center[j] for j in range(D)], mc.last_update, mc.weight]
                         for i, mc in db._micro_clusters.items()},
               "s": {str(i): {str(j): v for j, v in r.items()} for i, r in db.s.items()},
               "s_t": {str(i): {str(j): v for j, v in r.items()} for i, r in db.s_t.items()}}}
    back = from_checkpoint(json.loads(json.dumps(old)))
    assert back.scaler.means.tolist() == [0.5] * D and back.scaler.counts.tolist() == [7] * D
    assert isinstance(back, DensityModel)
    for x in rows[800:]:
        db.learn_one(dict(enumerate(x.tolist())))
        back.db.learn_one(x)
    macro = [[c[i] for i in range(D)] for c in db.centers.values()]
    assert np.allclose(back.db.macro_centres(), macro, atol=1e-12)


@pytest.mark.parametrize("cfg", [SegmenterConfig(), SegmenterConfig(algorithm="dbstream"),
                                 SegmenterConfig(min_segments=2, max_segments=5, warmup=300,
                                                 learn_sample=32, seed=1, step=0.05),
                                 SegmenterConfig(algorithm="dbstream", max_segments=4)])
def test_model_for_builds_what_the_config_names(cfg: SegmenterConfig) -> None:
    m = model_for(cfg)
    assert m.algorithm == cfg.algorithm
    assert m.params()["max_segments"] == cfg.max_segments and m.warmup == cfg.warmup
    assert m.min_segments == (1 if cfg.algorithm == "dbstream" else cfg.min_segments)


def test_unknown_algorithms_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'x'"):
        model_for(SimpleNamespace(algorithm="x", min_segments=1, max_segments=2, warmup=2,
                                  learn_sample=2, seed=0, step=0.1))


def test_models_import_neither_river_nor_each_other_in_a_circle() -> None:
    """The base imports no algorithm (one registry, no circle); no model needs River."""
    code = ("import sys, models.model; base = set(sys.modules); import models.algorithms; "
            "print(sorted(m for m in base if m.startswith('models.')), 'river' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "models.kmeans" not in out and "models.density" not in out
    assert out.strip().endswith("False"), out
    assert FEATURE_SCHEMA  # the schema a checkpoint is checked against
