"""One model for all workers: a single trainer, versioned snapshots, samples from everyone.

- The worker holding the Redis lease ``seg:learner`` trains the model: its core updates the
  model from a sample of *current* customers of every worker (its own cache, plus the samples
  the others publish, see ``stream.samples``), and publishes each new version as a snapshot
  (``seg:model`` + ``seg:model-version``, with the profiles and lifecycle messages, in one
  atomic script that refuses to overwrite a newer version).
- Every other worker assigns with the latest snapshot it loaded (polled every
  ``SEGMENTER_MODEL_POLL_S``), publishes its sample, and never learns. When the trainer dies,
  its lease expires and another worker takes over from the latest snapshot.

Snapshots are JSON checkpoints (never pickle) of plain numbers, checked against the
checkpoint format, the algorithm and the feature schema
(:func:`models.algorithms.from_checkpoint`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from models.algorithms import from_checkpoint
from models.core import BatchResult, Segmenter
from models.model import BaseModel
from models.profiles import build_profiles
from stream.errors import RetriableError, reason
from stream.keys import load_json
from stream.lease import Lease
from stream.metrics import Metrics
from stream.redis_io import RETRIABLE, RedisStore
from stream.samples import SampleBoard

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Snapshot:
    """A model version as published: the checkpoint and what its profiles are built from."""

    version: int
    """The model version."""
    checkpoint: str
    """:meth:`models.model.BaseModel.checkpoint`, as JSON."""
    ids: list[str]
    """Segment ids, in the centres' order."""
    centres: list[list[float]]
    """Centres in the scaled space."""
    units: list[list[float]]
    """Centres in feature units."""
    names: dict[str, str]
    """Segment names by id."""
    criterion: dict[str, Any]
    """How the number of segments was chosen."""
    lifecycle: list[dict[str, Any]]
    """Lifecycle messages of the update (``at`` is set when sent)."""
    lifecycle_centres: dict[str, tuple[list[float], list[float]]]
    """Centres of the segments those messages name (:attr:`BatchResult.centres`)."""
    fence: int = 0
    """The training lease's fencing token when the snapshot was taken (0: never held)."""


class ModelSync:
    """Keeps a worker's core on the shared model: the training lease, snapshots, samples.

    It holds no core: the pipeline passes its :class:`~models.core.Segmenter` to each call.
    """

    def __init__(self, store: RedisStore, metrics: Metrics, sample_size: int = 2000) -> None:
        self.store, self.metrics = store, metrics
        self.keys = store.keys
        self.lease = Lease(store.r, self.keys.training_lease)
        self.sample_size = sample_size
        self.events_seen = 0  # events this worker processed (published with its sample)
        self._last_sample = 0.0
        self.samples = SampleBoard(store.r, self.keys, self.lease.me)
        self._token = 0  # fencing token of the holding this worker trains under
        self.profiles: dict[str, dict[str, Any]] = {}

    async def load_latest(self) -> BaseModel | None:
        """The latest snapshot, or None; a mismatching one raises ``CheckpointMismatch``."""
        raw = await self.store.r.get(self.keys.model)
        return from_checkpoint(load_json(raw)) if raw else None

    async def tick(self, core: Segmenter) -> list[BatchResult]:
        """One round: hold or seek the lease; as the trainer, take the others' samples and
        update when due; otherwise load a newer snapshot and publish our sample. Returns
        results whose assignments the caller writes. Call with no model update running
        (:meth:`stream.updates.ModelUpdates.apply` with ``settle``). Raises
        :class:`RetriableError` on Redis outages."""
        try:
            return await self._tick(core)
        except RETRIABLE as exc:
            raise RetriableError(
                f"Redis unavailable while syncing the model: {reason(exc)}") from exc

    async def _tick(self, core: Segmenter) -> list[BatchResult]:
        schedule, out = core.schedule, []
        trains = await self.lease.renew()
        if trains and (not schedule.trains or self.lease.token != self._token):
            # taken, or taken again after losing it unnoticed (a pause past the lease): a
            # successor may have published meanwhile
            self._token = self.lease.token
            newer = await self._load_newer(core)  # continue from the last published version
            if newer is not None:
                out.append(newer)
            log.info("this worker now trains the model (version %d)", core.model.version)
            await self.samples.forget_legacy()
        schedule.trains = trains
        self.metrics.trains.set(1 if trains else 0)
        if trains:
            await self._take_samples(core)
            res = core.apply([], {})  # an update due through the others' events, inline
            if res.model_updated:
                await self.publish(core, res)
            out.append(res)
        else:
            newer = await self._load_newer(core)
            if newer is not None:
                out.append(newer)
            await self._publish_sample(core)
        return out

    async def _load_newer(self, core: Segmenter) -> BatchResult | None:
        raw_version = await self.store.r.get(self.keys.model_version)
        if raw_version is None or int(raw_version) <= core.model.version:
            return None
        model = await self.load_latest()
        if model is None:
            return None
        res = core.adopt(model)
        if res is not None:
            log.info("loaded model version %d (%d segments)", model.version, model.n_segments)
            self.observe_model(core)
        return res

    async def _publish_sample(self, core: Segmenter) -> None:
        schedule, now = core.schedule, time.time()
        if schedule.warming:
            return
        if not schedule.sample_due and now - self._last_sample < 10 and self._last_sample:
            return
        rows = schedule.own_sample(core.cache, self.sample_size)
        await self.samples.publish(len(core.cache), self.events_seen, rows)
        schedule.sample_due, self._last_sample = False, now

    async def _take_samples(self, core: Segmenter) -> None:
        fresh, gone = await self.samples.take()
        for worker in gone:
            core.schedule.drop_remote(worker)
        for worker, (population, rows, events) in fresh.items():
            core.schedule.add_remote(worker, population, rows, events)

    def snapshot(self, model: BaseModel, res: BatchResult) -> Snapshot:
        """What :meth:`send` stores for ``model`` as it is now (``res``: the batch that moved
        it), taken at once: the model goes on changing while it is sent. It carries the
        training lease's fencing token of now: sent after a successor took the lease, it is
        refused."""
        return Snapshot(model.version, orjson.dumps(model.checkpoint()).decode(), list(model.ids),
                        model.centres_scaled().tolist(), model.centres_model_space().tolist(),
                        dict(model.names), dict(model.criterion), res.lifecycle,
                        res.centres, self._token)

    async def publish(self, core: Segmenter, res: BatchResult) -> bool:
        """:meth:`send` the core's model as it is now."""
        return await self.send(self.snapshot(core.model, res))

    async def send(self, snap: Snapshot) -> bool:
        """Store the trainer's new version with profiles and lifecycle messages, atomically;
        False when a newer version was there already."""
        now_ms = int(time.time() * 1000)
        sizes = await self.store.sizes()
        for e in snap.lifecycle:
            e["at"] = now_ms
        self.profiles = build_profiles(
            snap.ids, snap.centres, snap.units, snap.names, sizes,
            self.profiles or await self.store.profiles(), snap.version, now_ms,
            snap.criterion, snap.lifecycle, snap.lifecycle_centres)
        ok = await self.store.publish_model(
            snap.version, snap.checkpoint, self.profiles, snap.lifecycle,
            (self.lease.fence_key, snap.fence))
        if ok:
            for e in snap.lifecycle:
                self.metrics.lifecycle.labels(e["event"]).inc()
                log.info("segment %s %s (model version %d)", e["segment"], e["event"],
                         snap.version)
            # the gauges follow what is published (a batch's snapshot is sent after the
            # next batch started): what operators see is what every worker can load
            self._observe(snap.version, len(snap.ids), snap.criterion)
        return bool(ok)

    def observe_model(self, core: Segmenter) -> None:
        """Model gauges of the model the core assigns with (loaded or published)."""
        model = core.model
        self._observe(model.version, model.n_segments, model.criterion)

    def _observe(self, version: int, segments: int, criterion: dict[str, Any]) -> None:
        m = self.metrics
        m.model_version.set(version)
        m.segments.set(segments)
        if criterion:
            value = criterion.get("value")  # null: infinite (one segment)
            m.criterion.labels(criterion.get("name", "")).set(
                float("inf") if value is None else value)

    async def close(self) -> None:
        """Hand the training over at once (the next worker need not wait for expiry)."""
        await self.lease.release()
