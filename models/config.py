"""Configuration of the pure core and what one batch decided (the model a configuration
names is built by :func:`models.algorithms.model_for`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from models.records import Assignment, DeadLetter

__all__ = ["BatchResult", "SegmenterConfig"]


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Tuning of the pure core (mirrors the ``SEGMENTER_*`` settings)."""

    algorithm: str = "kmeans"
    """``kmeans`` (River KMeans, count chosen in bounds) or ``dbstream`` (River DBSTREAM)."""
    min_segments: int = 3
    """Fewest segments."""
    max_segments: int = 8
    """Most segments."""
    half_life_days: float = 30.0
    """Half-life of decayed features, in event-time days."""
    allowed_lateness_ms: int = 86_400_000
    """How far behind a customer's newest event an event may be and still apply (event
    time); see :mod:`models.state`."""
    dedup_max_ids: int = 128
    """Most event ids remembered per customer."""
    update_every: int = 5000
    """Valid events between model updates."""
    update_every_days: float = 1.0
    """Event-time days between model updates, whichever of the two comes first (0: events
    only): a sparse log (a small shop, a backfill of years of orders) still gets a model
    that follows its population day by day."""
    warmup: int = 200
    """Distinct customer vectors gathered before the model starts assigning."""
    learn_sample: int = 64
    """Current customers sampled and learned (``learn_one``) per model update."""
    refresh_every: int = 4
    """Every this many updates, re-cluster a larger sample of current customers."""
    refresh_sample: int = 2000
    """Current customers sampled for seeding and refreshes."""
    sticky: float = 0.3
    """A customer without new events keeps their segment at a model update while its centre is
    within this share (relative distance, scaled space) of the nearest centre; a segment
    that ended (merged, retired) always lets them go. Events are never sticky."""
    step: float = 0.02
    """River KMeans step size (its ``halflife``)."""
    seed: int = 42
    """Random seed."""
    cache_size: int = 200_000
    """Customer states kept in memory (the rest is re-read from Redis)."""
    trains: bool = True
    """This core updates the model; False: it assigns with snapshots it is given."""
    active_days: float = 0.0
    """When above 0, only customers active within this many event-time days form the
    population the model learns from (the long gone still get a segment, but no longer shape
    the segments). 0 (the default): every customer held. Measured on the CDNOW log
    (``scripts.evaluate``): learning from the last 90 days left its 20,000 lapsed customers
    in 3 ill-fitting segments (variance explained 0.75x batch k-means; everyone: 1.00x)."""


@dataclass(slots=True)
class BatchResult:
    """Everything :meth:`Segmenter.apply` decided for one batch."""

    assignments: list[Assignment] = field(default_factory=list)
    """Customers whose segment changed: write now (the rest wait for :meth:`Segmenter.drain`)."""
    dead: list[DeadLetter] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    model_updated: bool = False
    event_ts: list[int] = field(default_factory=list)
    """Event time of every applied event, epoch ms."""
    arrived_ts: list[int] = field(default_factory=list)
    """When each applied event reached Kafka (its record's timestamp), epoch ms."""
    erased: list[str] = field(default_factory=list)
    """Customers to erase from Redis before the assignments are written."""
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    """Segments born, split, merged or retired by this batch's model updates."""
    learn_seconds: float = 0.0
    """Time spent updating the model (sampling, learning, naming), for the stage metric."""
    produce: list[tuple[bytes, bytes | None, bytes | None]] = field(default_factory=list)
    """Messages for the events topic, in order, before the batch is committed (identity
    stitching: links, merges, forwarded events; erasures of linked ids): key, value, the
    ``segmenter.control`` header's value (None: an event)."""
    linked: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    """Link records to write in place of anonymous ids' states: id, partition, offset (of
    the link message: the fence), the record's bytes."""
    unlinked: list[tuple[str, str]] = field(default_factory=list)
    """Link records to delete (the id was dropped past its customer's bound): anonymous id,
    the customer it must still be linked to."""
    merged: list[tuple[str, str, str, int]] = field(default_factory=list)
    """Anonymous ids merged into customers: anonymous id, customer id, link event id and
    time (the mirror and the ``merge`` change message follow the customer's write)."""
    centres: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """Centre (scaled, model space) of every segment a lifecycle event names, as it was at
    that update: a segment born and merged within one batch still gets a full profile."""
