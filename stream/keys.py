"""The Redis layout (contract §2): every key a worker reads or writes, from one prefix, and
how what is stored there reads back (:func:`load_profile`, :func:`decode_state`).

Customer ids sit inside a hash tag, ``{…}``, as they are, so a customer's keys share a
Redis Cluster slot (the global keys need a hash tag in the prefix for that, see the README).

>>> k = Keys("seg:")
>>> k.customer("c-42"), k.changes
('seg:customer:{c-42}', 'seg:changes')
>>> Keys("a*b:").state_pattern
'a\\\\*b:state:{*}'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from models.state import CustomerState, UnknownSchema
from stream.errors import IncompatibleState


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key, derived from the prefix; customer ids sit inside a hash tag."""

    prefix: str
    """Key prefix, ``seg:`` by default."""

    def customer(self, cid: str) -> str:
        """The contract §2 hash a website reads."""
        return f"{self.prefix}customer:{{{cid}}}"

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
        return f"{self.prefix}partition-index"

    @property
    def segments(self) -> str:
        """Hash of segment id -> JSON profile."""
        return f"{self.prefix}segments"

    @property
    def sizes(self) -> str:
        """Hash of segment id -> member count."""
        return f"{self.prefix}sizes"

    @property
    def rfm(self) -> str:
        """Hash of the population of buyers: RFM bucket -> buyers (see ``stream.rfm_io``)."""
        return f"{self.prefix}rfm"

    @property
    def rfm_grid(self) -> str:
        """Hash of the buyers per joint recency x frequency bucket, ``<r>:<f>`` -> buyers:
        the dashboard's RFM grid (see ``stream.rfm_io``)."""
        return f"{self.prefix}rfm-grid"

    @property
    def changes(self) -> str:
        """Stream (and Pub/Sub channel) of segment changes."""
        return f"{self.prefix}changes"

    @property
    def audiences(self) -> str:
        """Hash of audience id -> its definition (JSON, contract §2.3)."""
        return f"{self.prefix}audiences"

    @property
    def audiences_version(self) -> str:
        """Counter bumped by every change of :attr:`audiences` (workers poll this small key;
        a write made with older definitions leaves memberships alone)."""
        return f"{self.prefix}audiences-version"

    @property
    def audience_sizes(self) -> str:
        """Hash of audience id -> member count (kept atomically with every membership)."""
        return f"{self.prefix}audience-sizes"

    @property
    def audience_changes(self) -> str:
        """Stream (and Pub/Sub channel) of audience entries and exits."""
        return f"{self.prefix}audience-changes"

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
        return f"{self.prefix}audience-progress"

    @property
    def audience_evaluated(self) -> str:
        """Hash of events-topic partition -> the audience definitions' version evaluated over
        all its stored customers (``stream.audience_pass``)."""
        return f"{self.prefix}audience-evaluated"

    @property
    def model(self) -> str:
        """The latest model snapshot: a JSON checkpoint (see ``models.model``)."""
        return f"{self.prefix}model"

    @property
    def model_version(self) -> str:
        """The version of :attr:`model` (workers poll this small key)."""
        return f"{self.prefix}model-version"

    @property
    def training_lease(self) -> str:
        """Lease of the one worker that trains the shared model (the key keeps its first
        name, ``learner``, so running deployments keep their lease)."""
        return f"{self.prefix}learner"

    def sample(self, worker: str) -> str:
        """A worker's latest sample of current customers, for the trainer; expires a minute
        after the worker stops publishing (``stream.samples``)."""
        return f"{self.prefix}sample:{{{worker}}}"

    @property
    def sample_index(self) -> str:
        """Sorted set of worker -> when it last published its :meth:`sample` (epoch ms)."""
        return f"{self.prefix}sample-index"

    @property
    def samples(self) -> str:
        """The hash of every worker's sample that older versions kept (deleted now)."""
        return f"{self.prefix}samples"

    @property
    def lifecycle(self) -> str:
        """Stream of segment lifecycle messages (born, split, merged, retired)."""
        return f"{self.prefix}lifecycle"


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
