"""The Redis layout (contract §2): every key a worker reads or writes, from one prefix, and
how what is stored there reads back (:func:`load_profile`, :func:`decode_state`).

Customer ids sit inside a hash tag, ``{…}``, as they are, so a customer's keys share a
Redis Cluster slot.

On Redis Cluster (``cluster=True``, setting ``SEGMENTER_REDIS_CLUSTER``) the layout is
sharded (``stream.shards``): the customer keys keep their names; the low-rate global keys
(model, segment profiles, audiences, leases, lifecycle) share one slot through the hash tag
``{<prefix>}``, so their multi-key scripts and transactions still run; and what every event
moves (segment and audience sizes and changes, the RFM population, the partition index) is
kept per events-topic partition, in keys whose hash tag is the partition number.

>>> k = Keys("seg:")
>>> k.customer("c-42"), k.changes
('seg:customer:{c-42}', 'seg:changes')
>>> c = Keys("seg:", cluster=True)
>>> c.customer("c-42"), c.segments, c.shard("changes", 3), c.partition(3)
('seg:customer:{c-42}', '{seg}:segments', 'seg:changes:{3}', 'seg:partition:{3}')
>>> Keys("a*b:").state_pattern
'a\\\\*b:state:{*}'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from models.state import CustomerState, UnknownSchema
from stream.errors import IncompatibleState


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key, derived from the prefix; customer ids sit inside a hash tag."""

    prefix: str
    """Key prefix, ``seg:`` by default."""
    cluster: bool = False
    """The sharded layout for Redis Cluster (see the module's docstring)."""

    def global_key(self, name: str) -> str:
        """A global key: ``<prefix><name>``, or on a cluster ``{<prefix>}:<name>`` (every
        global key in one slot, the slot today's ``SEGMENTER_REDIS_PREFIX={seg}:`` used)."""
        if not self.cluster:
            return f"{self.prefix}{name}"
        return f"{{{self.prefix.rstrip(':')}}}:{name}"

    def shard(self, name: str, partition: int | str) -> str:
        """Cluster layout: the per-partition shard of an aggregate (``sizes``, ``changes``,
        ``rfm``, ``rfm-grid``, ``audience-sizes``, ``audience-changes``, ``moved``); the
        partition number is the hash tag, as in :meth:`partition`."""
        return f"{self.prefix}{name}:{{{partition}}}"

    @property
    def shards(self) -> str:
        """Cluster layout: set of the partitions that have shards (readers merge them)."""
        return self.global_key("shards")

    def outbox(self, cid: str) -> str:
        """Cluster layout: the outbox stream of the slot of ``cid``'s keys, where a
        customer write leaves what it moved in the aggregates (``stream.shards``)."""
        return f"{self.prefix}outbox:{{{slot_tag(key_slot(self.customer(cid).encode()))}}}"

    def relay_lease(self, stream: str) -> str:
        """The relay's lease of ``stream`` (same slot: its scripts touch both)."""
        if stream.endswith("}"):  # a shard: its lease shares its hash tag
            head, _, tag = stream.rpartition("{")
            return f"{head.rstrip(':')}:relay-leader:{{{tag}"
        return f"{stream}:relay-leader" if self.cluster else {
            self.changes: f"{self.prefix}relay-leader",
            self.audience_changes: f"{self.prefix}relay-leader:audiences",
            self.lifecycle: f"{self.prefix}relay-leader:lifecycle"}.get(
                stream, f"{stream}:relay-leader")

    def customer(self, cid: str) -> str:
        """The contract §2 hash a website reads."""
        return f"{self.prefix}customer:{{{cid}}}"

    def shop_claim(self, some_id: str) -> str:
        """The demo shop's log-in claim of an anonymous id (value: its customer id) or of a
        customer id (value: its anonymous id); ``ck-`` ids are never customer ids."""
        return f"{self.prefix}shop-claim:{{{some_id}}}"

    def ids(self, cid: str) -> str:
        """Hash of the anonymous ids linked to a customer by identity stitching, id -> link
        event time (same slot as the customer's other keys; bounded by
        ``SEGMENTER_MAX_ANONYMOUS_IDS``)."""
        return f"{self.prefix}ids:{{{cid}}}"

    def state(self, cid: str) -> str:
        """Internal feature state of a customer: a string ``partition:offset:`` + the
        :meth:`~models.features.CustomerState.to_bytes` blob (a plain string, not a hash:
        half the memory)."""
        return f"{self.prefix}state:{{{cid}}}"

    @property
    def state_pattern(self) -> str:
        """``SCAN MATCH`` pattern of every :meth:`state` key (the prefix glob-escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "state:{*}"

    def partition(self, partition: int | str) -> str:
        """Set of the customers whose state was written from this events-topic partition
        (the warm start's index, see ``stream.partition_index``); the partition number sits
        in the hash tag, as a customer id does in a customer's keys."""
        return f"{self.prefix}partition:{{{partition}}}"

    @property
    def partition_indexed(self) -> str:
        """Marker, set once every stored state is in its partition's :meth:`partition` set
        (by ``segmenter reindex``, or on a keyspace that had no state)."""
        return self.global_key("partition-index")

    @property
    def segments(self) -> str:
        """Hash of segment id -> JSON profile."""
        return self.global_key("segments")

    @property
    def sizes(self) -> str:
        """Hash of segment id -> member count."""
        return self.global_key("sizes")

    @property
    def rfm(self) -> str:
        """Hash of the population of buyers: RFM bucket -> buyers (see ``stream.rfm_io``)."""
        return self.global_key("rfm")

    @property
    def rfm_grid(self) -> str:
        """Hash of the buyers per joint recency x frequency bucket, ``<r>:<f>`` -> buyers:
        the dashboard's RFM grid (see ``stream.rfm_io``)."""
        return self.global_key("rfm-grid")

    @property
    def changes(self) -> str:
        """Stream (and Pub/Sub channel) of segment changes."""
        return self.global_key("changes")

    @property
    def audiences(self) -> str:
        """Hash of audience id -> its definition (JSON, contract §2.3)."""
        return self.global_key("audiences")

    @property
    def audiences_version(self) -> str:
        """Counter bumped by every change of :attr:`audiences` (workers poll this small key;
        a write made with older definitions leaves memberships alone)."""
        return self.global_key("audiences-version")

    @property
    def audience_sizes(self) -> str:
        """Hash of audience id -> member count (kept atomically with every membership)."""
        return self.global_key("audience-sizes")

    @property
    def audience_changes(self) -> str:
        """Stream (and Pub/Sub channel) of audience entries and exits."""
        return self.global_key("audience-changes")

    @property
    def audience_keys(self) -> tuple[str, str, str, str]:
        """What a customer write script reads and writes of audiences (sizes, changes,
        version, definitions)."""
        return (self.audience_sizes, self.audience_changes, self.audiences_version,
                self.audiences)

    @property
    def audience_progress(self) -> str:
        """Hash of worker -> JSON progress of its evaluation of the current definitions over
        the stored customers of its partitions."""
        return self.global_key("audience-progress")

    @property
    def audience_evaluated(self) -> str:
        """Hash of events-topic partition -> the audience definitions' version evaluated over
        all its stored customers (``stream.audience_pass``)."""
        return self.global_key("audience-evaluated")

    @property
    def model(self) -> str:
        """The latest model snapshot: a JSON checkpoint (see ``models.model``)."""
        return self.global_key("model")

    @property
    def model_version(self) -> str:
        """The version of :attr:`model` (workers poll this small key)."""
        return self.global_key("model-version")

    @property
    def training_lease(self) -> str:
        """Lease of the one worker that trains the shared model (the key keeps its first
        name, ``learner``, so running deployments keep their lease)."""
        return self.global_key("learner")

    def sample(self, worker: str) -> str:
        """A worker's latest sample of current customers, for the trainer; expires a minute
        after the worker stops publishing (``stream.samples``)."""
        if self.cluster:  # beside the index: one transaction writes both
            return self.global_key(f"sample:{worker}")
        return f"{self.prefix}sample:{{{worker}}}"

    @property
    def sample_index(self) -> str:
        """Sorted set of worker -> when it last published its :meth:`sample` (epoch ms)."""
        return self.global_key("sample-index")

    @property
    def samples(self) -> str:
        """The hash of every worker's sample that older versions kept (deleted now)."""
        return self.global_key("samples")

    @property
    def lifecycle(self) -> str:
        """Stream of segment lifecycle messages (born, split, merged, retired)."""
        return self.global_key("lifecycle")


@cache
def _slot_tags() -> tuple[str, ...]:
    """For every cluster slot, a short string that hashes to it (found once, ~0.2 s)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    left, i = REDIS_CLUSTER_HASH_SLOTS, 0
    while left:
        tag = format(i, "x")
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot], left = tag, left - 1
        i += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    """A hash tag that puts a key in ``slot``.

    >>> key_slot(b"x{" + slot_tag(key_slot(b"{c-42}")).encode() + b"}") == key_slot(b"c-42")
    True
    """
    return _slot_tags()[slot]


_NON_FINITE = re.compile(rb"(?<=[:,\[])(\s*)-?(?:Infinity|NaN)(?=\s*[,\]}])")


def load_profile(raw: bytes | str) -> dict[str, Any]:
    """A segment profile as stored in :attr:`Keys.segments`.

    Profiles are written by orjson, which stores a non-finite number (a Davies–Bouldin
    index of one segment is infinite) as ``null``. Python's ``json`` module spells it
    ``Infinity`` or ``NaN``, which is not JSON; profiles it wrote (older versions) read
    as ``null`` too.

    >>> load_profile(b'{"id": "s0", "criterion": {"value": Infinity, "by_count": [NaN]}}')
    {'id': 's0', 'criterion': {'value': None, 'by_count': [None]}}
    """
    return load_json(raw)


def load_json(raw: bytes | str) -> dict[str, Any]:
    """A JSON object stored in Redis (a profile, a model checkpoint), non-finite numbers
    written by older versions (``Infinity``, ``NaN``) read as ``null``."""
    raw = raw.encode() if isinstance(raw, str) else raw
    try:
        return dict(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return dict(orjson.loads(_NON_FINITE.sub(rb"\1null", raw)))


def decode_state(cid: str, blob: bytes, traits: dict[str, Any]) -> CustomerState:
    """A stored state; one of a newer schema raises :class:`IncompatibleState` (fatal)."""
    try:
        return CustomerState.from_bytes(cid, blob, traits)
    except UnknownSchema as exc:
        if exc.newer:
            raise IncompatibleState(f"{exc}: finish the rolling upgrade (replace this "
                                    "worker by the newer version); stopping") from exc
        raise
