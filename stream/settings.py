"""All settings, read once from ``SEGMENTER_*`` environment variables into a frozen object.

Examples
--------
>>> s = Settings.from_env({"SEGMENTER_PARTITIONS": "8", "SEGMENTER_DEBUG": "yes"})
>>> s.partitions, s.kafka, s.embedded
(8, '', True)
>>> Settings.from_env({"SEGMENTER_PARTITIONS": "eight"})
Traceback (most recent call last):
...
stream.errors.SettingsError: SEGMENTER_PARTITIONS must be an integer, got 'eight'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from stream.errors import SettingsError
from stream.http_limits import check_http
from stream.settings_checks import check_credentials

if TYPE_CHECKING:  # imported when used: a parse helper process imports settings, not NumPy
    from models.config import SegmenterConfig

SECRETS = frozenset({"api_token", "read_token", "write_key", "redis_password",
                     "kafka_password"})
"""Settings never shown: in the repr, only ``<hidden>`` when set."""
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every ``SEGMENTER_<NAME>`` setting; the field name upper-cased is the variable."""

    kafka: str = ""
    """Kafka bootstrap servers, comma-separated. Empty: the embedded broker (demo, tests)."""
    redis_url: str = ""
    """Redis URL, e.g. ``redis://host:6379/0``. Empty: the embedded Valkey server."""
    group: str = "segmenter"
    """Consumer group of the workers; its committed offsets on the events topic are the lag."""
    events_topic: str = "events"
    """Topic of incoming behavioral events."""
    dlq_topic: str = "events-dlq"
    """Dead-letter topic for invalid events."""
    changes_topic: str = "segment-changes"
    """Topic of segment change messages."""
    lifecycle_topic: str = "segment-lifecycle"
    """Topic of segment lifecycle messages (born, split, merged, retired)."""
    audience_changes_topic: str = "audience-changes"
    """Topic of audience membership changes (``entered``/``exited``, contract §3)."""
    audiences_file: str = ""
    """A JSON file of audiences loaded at start: an object from audience id to definition
    (``{"name": ..., "where": ...}``, contract §2.3). Each is stored (created or replaced)
    as ``PUT /audiences/<id>`` would; an invalid one stops the worker, naming the problem.
    Audiences defined over HTTP and not in the file are kept. Empty: none loaded."""
    partitions: int = 4
    """Partitions of the topics the worker creates."""
    replication: int = 1
    """Replication factor of the topics the worker creates."""
    redis_prefix: str = "seg:"
    """Prefix of every Redis key."""
    redis_cluster: bool = False
    """``SEGMENTER_REDIS_URL`` is a Redis Cluster (any of its nodes): the worker uses the
    cluster client and the sharded layout (``stream.shards``: customer keys as in the
    contract, global keys in the slot of the tag ``{<prefix>}``, per-event aggregates and
    change streams per events-topic partition). Off: one Redis, today's layout."""
    redis_username: str = ""
    """Redis ACL user, when not in ``SEGMENTER_REDIS_URL`` (``redis://user:pass@host:6379/0``,
    percent-encoded). Empty: the URL's, else Redis's ``default`` user."""
    redis_password: str = ""
    """Password of that user (or ``requirepass``), when not in the URL; never logged, hidden
    in the settings' repr. Not both in the URL and here."""
    redis_ca_file: str = ""
    """CA certificate(s), PEM, that signed the Redis server's certificate (``rediss://`` URLs
    only). Empty: the system's trusted CAs. The host name is checked against the certificate."""
    redis_cert_file: str = ""
    """Client certificate, PEM, for a Redis that asks for one (``tls-auth-clients``)."""
    redis_key_file: str = ""
    """Private key, PEM, of ``redis_cert_file`` (empty: in the certificate file)."""
    kafka_security_protocol: str = "PLAINTEXT"
    """``PLAINTEXT``, ``SSL`` (TLS), ``SASL_PLAINTEXT`` or ``SASL_SSL`` (SASL over TLS), for
    every Kafka client Segmenter makes (worker, Faust, lag, replay, simulate, scripts)."""
    kafka_sasl_mechanism: str = "PLAIN"
    """``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``, with a ``SASL_*`` protocol."""
    kafka_username: str = ""
    """SASL user name (``SASL_*`` protocols need it)."""
    kafka_password: str = ""
    """SASL password; never logged, hidden in the settings' repr."""
    kafka_ca_file: str = ""
    """CA certificate(s), PEM, of the brokers' certificates (``SSL``, ``SASL_SSL``). Empty:
    the system's trusted CAs. Host names are checked against the certificates."""
    kafka_cert_file: str = ""
    """Client certificate, PEM, for brokers that ask for one (``ssl.client.auth``)."""
    kafka_key_file: str = ""
    """Private key, PEM, of ``kafka_cert_file`` (empty: in the certificate file)."""
    web_port: int = 6066
    """HTTP port of the worker (API, metrics, dashboard)."""
    web_host: str = "127.0.0.1"
    """Address the HTTP server binds."""
    cors_origins: str = ""
    """Origins allowed to call the HTTP API from a browser, comma-separated (``*``: any)."""
    api_token: str = ""
    """Bearer token(s), comma-separated (rotation), for admin routes (erasure, audience
    changes); empty disables them."""
    read_token: str = ""
    """Bearer token(s), comma-separated, for personal data (``GET /customers/<id>``, the batch
    lookup, non-public segment fields); ``SEGMENTER_API_TOKEN`` is accepted too."""
    write_key: str = ""
    """Write key(s), comma-separated: when set, ``POST /events`` needs one as a bearer token
    (a collector's source key). Empty: the route is open (still rate-limited)."""
    public_fields: str = "segment,segment_name,model_version,updated_at,confidence"
    """Fields of ``GET /customers/<id>/segment`` without a read token, comma-separated, from
    ``http_limits.SEGMENT_FIELDS`` (traits never). Empty: the route needs the token too."""
    events_rate: float = 100.0
    """Events per second each client may send to ``POST /events`` (a token bucket per
    client; over it: 429 with ``Retry-After``). ``0``: no limit."""
    events_burst: int = 1000
    """Events a client may send at once (the bucket's size; at least 500, one request's)."""
    forwarded_hops: int = 0
    """Proxies in front that append to ``X-Forwarded-For``: the client (for rate limits) is
    that many entries from its right end. ``0``: the peer address (the header is ignored)."""
    max_body_bytes: int = 1_048_576
    """Largest request body of any route (413 beyond it); one event is at most 64 KiB."""
    session_timeout_s: float = 6.0
    """Kafka consumer session timeout. Short, so a group forms fast on the embedded broker."""
    algorithm: str = "kmeans"
    """Clusterer: ``kmeans`` (River KMeans, segment count chosen in bounds) or ``dbstream``
    (River DBSTREAM, density-based); trade-offs in BENCHMARKS.md."""
    min_segments: int = 3
    """Fewest segments the model may choose."""
    max_segments: int = 8
    """Most segments the model may choose (chosen by the Davies–Bouldin index in between)."""
    half_life_days: float = 30.0
    """Half-life of decayed features in event-time days."""
    max_future_s: float = 86_400.0
    """Seconds an event time may be ahead of the worker's wall clock (clock skew of senders);
    a later one is invalid (dead-lettered). There is no lower bound but the Unix epoch."""
    allowed_lateness_s: float = 86400.0
    """How far an event may lag behind the same customer's newest event (event time) and
    still be applied; a later one is refused as ``late`` (dead-lettered). Within it, a
    re-sent event (same ``event_id``) is recognised exactly; beyond it, refused: so a
    re-sent event changes nothing, whatever its age."""
    dedup_max_ids: int = 128
    """Most event ids remembered per customer; a customer with more events within the
    allowed lateness gets a tighter lateness (its oldest ids are dropped first)."""
    max_anonymous_ids: int = 8
    """Most anonymous ids (devices, browsers) linked to one customer by identity stitching
    (``seg:ids:{<customer>}``); a newer link beyond it drops the oldest one's mirror (its
    lookups find nothing until it sends events again). Must be at least 1."""
    model_update_every: int = 5000
    """Valid events between model updates (each update bumps ``model_version``)."""
    model_update_days: float = 1.0
    """Event-time days between model updates, whichever comes first with
    ``model_update_every`` (``0``: by event count only). A small shop or a backfill of years
    of orders still gets a model that follows its population."""
    warmup: int = 200
    """Customers seen before the model is seeded and starts assigning."""
    refresh_every: int = 4
    """Every this many model updates, re-cluster a sample of current customers (and choose
    the number of segments again)."""
    sticky: float = 0.3
    """A customer without new events keeps their segment at a model update while its centre
    is within this share (relative distance) of the nearest one."""
    parse_process: bool = True
    """Validate the next batch in a helper process while the worker applies the current one
    (same results; ``false``: in the worker, one process less, e.g. on a one-core host)."""
    learn_process: bool = True
    """Run model updates in a helper process while the core goes on with the events after
    them (same segments as inline: unit-tested; ``false``: in the worker, one process less)."""
    rescore_per_s: int = 5000
    """Customers without new events re-scored per second (reasons ``time``, ``model_update``);
    also the pace of a new audience's pass over stored customers (0: no re-scoring, and the
    pass unpaced)."""
    model_poll_s: float = 1.0
    """Seconds between checks for a newer model snapshot, and between sample publications."""
    state_cache: int = 200_000
    """Customer states kept in worker memory; the rest are re-read from Redis. Also how many
    customers' last written traits a worker remembers (a write sends the changed ones)."""
    commit_interval_s: float = 1.0
    """Seconds between state flushes + offset commits (new segments are written at once)."""
    commit_interval_behind_s: float = 5.0
    """The same while the worker is behind (a backlog, a backfill): a customer's events in
    that stretch cost one write, not one per second (as a Kafka Streams cache is flushed on
    its commit interval); caught up again, ``commit_interval_s`` holds at once."""
    flush_slice: int = 200
    """Most changed states written between two batches while the worker is caught up: the
    interval flush is written in slices interleaved with batches (the commit follows the
    last), so a live event waits behind one slice, not a whole flush (issue #21). Behind,
    and with ``0``, the flush is written at once (throughput). Re-scoring goes in slices of
    the same size."""
    batch_max: int = 20000
    """Most records consumed per batch (larger batches amortise per-batch work; measured)."""
    live_batch_max: int = 1000
    """Most records per batch while the worker is caught up (little lag on its partitions):
    small batches, nothing read ahead, so an event's segment reaches Redis within one short
    cycle; when behind, batches of up to ``batch_max`` (throughput). ``0``: always large."""
    fetch_wait_ms: int = 100
    """Longest time the broker may hold a fetch with no new records (Kafka
    ``fetch.max.wait.ms``; ``fetch.min.bytes`` stays 1, so Apache Kafka answers as soon as
    a record arrives and this bounds only idle polls). Brokers that do not answer early
    (the embedded one) add up to this to an event's latency at idle, so it is short."""
    stream_maxlen: int = 100_000
    """Approximate MAXLEN of the Redis change stream."""
    debug: bool = False
    """Verbose logging."""

    @property
    def embedded(self) -> bool:
        """True when no external Kafka or Redis is configured."""
        return not self.kafka or not self.redis_url

    def segmenter_config(self) -> SegmenterConfig:
        """The pure core's configuration."""
        from models.config import SegmenterConfig

        return SegmenterConfig(
            algorithm=self.algorithm, min_segments=self.min_segments,
            max_segments=self.max_segments, half_life_days=self.half_life_days,
            allowed_lateness_ms=int(self.allowed_lateness_s * 1000),
            dedup_max_ids=self.dedup_max_ids, update_every=self.model_update_every,
            update_every_days=self.model_update_days, warmup=self.warmup,
            refresh_every=max(1, self.refresh_every), sticky=self.sticky,
            cache_size=self.state_cache, trains=False,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``SEGMENTER_*`` variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"SEGMENTER_{f.name.upper()}"
            if name not in env:
                continue
            raw = env[name].strip()
            kind: type = type(f.default)
            if kind is bool:
                if raw.lower() not in _TRUE | _FALSE:
                    raise SettingsError(f"{name} must be a boolean (true/false), got {raw!r}")
                values[f.name] = raw.lower() in _TRUE
            elif kind in (int, float):
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    word = "an integer" if kind is int else "a number"
                    raise SettingsError(f"{name} must be {word}, got {raw!r}") from None
                if values[f.name] < 0:
                    raise SettingsError(f"{name} must not be negative, got {raw!r}")
            else:
                values[f.name] = raw
        s = cls(**values)
        if min(s.partitions, s.min_segments, s.batch_max, s.max_anonymous_ids) < 1:
            raise SettingsError("SEGMENTER_PARTITIONS, _MIN_SEGMENTS, _BATCH_MAX and "
                                "_MAX_ANONYMOUS_IDS must be >= 1")
        if s.max_segments < s.min_segments:
            raise SettingsError("SEGMENTER_MAX_SEGMENTS must be at least SEGMENTER_MIN_SEGMENTS")
        if s.warmup < s.max_segments:
            raise SettingsError("SEGMENTER_WARMUP must be at least SEGMENTER_MAX_SEGMENTS")
        check_http(s.public_fields, s.events_rate, s.events_burst, s.max_body_bytes)
        if s.algorithm not in ("kmeans", "dbstream"):
            raise SettingsError(f"SEGMENTER_ALGORITHM must be kmeans or dbstream, "
                                f"got {s.algorithm!r}")
        check_credentials(s)
        return s

    def __repr__(self) -> str:
        # Secrets show only whether they are set; the Redis URL without its password.
        def show(name: str, value: Any) -> str:
            if name in SECRETS and value:
                return "<hidden>"
            return repr(redact_url(value) if name == "redis_url" else value)
        shown = (f"{f.name}={show(f.name, getattr(self, f.name))}" for f in fields(self))
        return f"Settings({', '.join(shown)})"

    def with_env(self, **overrides: Any) -> dict[str, str]:
        """Environment variables that reproduce these settings (for child processes)."""
        out = {}
        for f in fields(self):
            value = overrides.get(f.name, getattr(self, f.name))
            out[f"SEGMENTER_{f.name.upper()}"] = str(value).lower() if isinstance(
                value, bool) else str(value)
        return out


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and messages.

    >>> redact_url("rediss://app:s3cret@redis.internal:6380/0")
    'rediss://app:***@redis.internal:6380/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{parts.netloc.rpartition('@')[2]}").geturl()
