"""The one registry of segmentation algorithms: their names, how to build one, and how to
read any checkpoint back (:func:`from_checkpoint`).

A new algorithm is a :class:`~models.model.BaseModel` subclass in its own module, one entry
in :data:`ALGORITHMS`, and (when it takes different settings) a branch in :func:`model_for`.
:mod:`models.model` imports no algorithm, so nothing here is imported in a circle.

Examples
--------
>>> import numpy as np
>>> from models.features import FEATURE_NAMES
>>> rng = np.random.default_rng(0)
>>> blobs = np.concatenate([rng.normal(m, 0.1, size=(100, len(FEATURE_NAMES)))
...                         for m in (0.0, 5.0)])
>>> m = make_model("kmeans", min_segments=2, max_segments=4, warmup=200)
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

from typing import Any, Protocol

from models.density import DensityModel
from models.kmeans import SegmentModel
from models.model import BaseModel, check_checkpoint

__all__ = ["ALGORITHMS", "ModelSettings", "from_checkpoint", "make_model", "model_for"]

ALGORITHMS: dict[str, type[BaseModel]] = {"kmeans": SegmentModel, "dbstream": DensityModel}
"""Every algorithm by the name settings and checkpoints use."""


class ModelSettings(Protocol):
    """What :func:`model_for` reads (``models.config.SegmenterConfig`` has it all)."""

    @property
    def algorithm(self) -> str: ...
    @property
    def min_segments(self) -> int: ...
    @property
    def max_segments(self) -> int: ...
    @property
    def warmup(self) -> int: ...
    @property
    def learn_sample(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def step(self) -> float: ...


def make_model(algorithm: str, **params: Any) -> BaseModel:
    """A new model of ``algorithm`` with these constructor arguments.

    >>> make_model("hdbscan")
    Traceback (most recent call last):
    ...
    ValueError: unknown algorithm 'hdbscan' (use kmeans or dbstream)
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r} (use {' or '.join(ALGORITHMS)})")
    return ALGORITHMS[algorithm](**params)


def model_for(cfg: ModelSettings) -> BaseModel:
    """The model the settings name. KMeans takes the segment bounds and the step; DBSTREAM
    lets the data decide how many segments there are (at least one, at most
    ``max_segments``) and has no step.

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(algorithm="dbstream", min_segments=3, max_segments=6,
    ...                       warmup=500, learn_sample=64, seed=42, step=0.02)
    >>> m = model_for(cfg)
    >>> m.algorithm, m.min_segments, m.max_segments
    ('dbstream', 1, 6)
    """
    common: dict[str, Any] = {"max_segments": cfg.max_segments, "warmup": cfg.warmup,
                              "learn_sample": cfg.learn_sample, "seed": cfg.seed}
    if cfg.algorithm == "dbstream":
        return make_model("dbstream", min_segments=1, **common)
    if cfg.algorithm == "kmeans":
        return make_model("kmeans", min_segments=cfg.min_segments, step=cfg.step, **common)
    return make_model(cfg.algorithm, **common)  # raises: unknown algorithm


def from_checkpoint(data: dict[str, Any]) -> BaseModel:
    """Rebuild a model of any algorithm from :meth:`~models.model.BaseModel.checkpoint`;
    raise :class:`~models.model.CheckpointMismatch` when the checkpoint does not fit this
    code (:func:`~models.model.check_checkpoint`)."""
    check_checkpoint(data, ALGORITHMS)
    model = ALGORITHMS[data["algorithm"]](**data["params"])
    model.load(data)
    return model
