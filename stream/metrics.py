"""Prometheus metrics (SPEC §5). One registry per worker; labels never carry customer ids."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The worker's metrics, registered in their own registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter("segmenter_events", "Events consumed, by type and outcome",
                              ["type", "outcome"], registry=r)
        self.lag = Gauge("segmenter_consumer_lag",
                         "End offset minus the group's committed offset, read from the broker",
                         ["topic", "partition"], registry=r)
        self.lag_seconds = Gauge(
            "segmenter_consumer_lag_seconds",
            "Age of the oldest unprocessed event (now minus its Kafka timestamp)",
            ["topic", "partition"], registry=r)
        self.freshness = Histogram(
            "segmenter_event_to_segment_seconds",
            "Freshness: from an event's arrival in Kafka (its record's timestamp) to the "
            "Redis write that applied it; what operators call processing delay",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r)
        self.lateness = Histogram(
            "segmenter_event_lateness_seconds",
            "Event time to arrival in Kafka (record timestamp): how late producers send; "
            "large for backfills and offline-synced apps, not a processing delay",
            buckets=(0.1, 1, 10, 60, 600, 3600, 21600, 86400, 7 * 86400, 30 * 86400,
                     365 * 86400), registry=r)
        self.changes = Counter("segmenter_segment_changes", "Segment changes written",
                               registry=r)
        self.segment_size = Gauge("segmenter_segment_size", "Customers per segment",
                                  ["segment"], registry=r)
        self.audience_size = Gauge("segmenter_audience_size", "Members per audience",
                                   ["audience"], registry=r)
        self.model_version = Gauge("segmenter_model_version", "Version of the model in use",
                                   registry=r)
        self.batch_seconds = Histogram(
            "segmenter_batch_seconds", "Wall time to process one consumed batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.redis_errors = Counter("segmenter_redis_errors", "Failed Redis round trips",
                                    registry=r)
        self.commits = Counter("segmenter_commits", "Offset commits of the events group",
                               registry=r)
        self.last_commit = Gauge("segmenter_last_commit_timestamp_seconds",
                                 "Unix time of the last offset commit", registry=r)
        self.assigned = Gauge("segmenter_assigned_partitions",
                              "Partitions of the events topic assigned to this worker",
                              registry=r)
        self.health_ok = Gauge("segmenter_health_ok",
                               "1 when /health would answer 200, else 0", registry=r)
        self.fenced = Counter("segmenter_fenced_writes",
                              "Customer writes refused because a newer write existed",
                              registry=r)
        self.trains = Gauge("segmenter_model_learner",
                            "1 on the one worker that trains the shared model, else 0",
                            registry=r)
        self.segments = Gauge("segmenter_segments", "Active segments in the model in use",
                              registry=r)
        self.criterion = Gauge("segmenter_model_criterion",
                               "Criterion for the number of segments (Davies-Bouldin index, "
                               "lower is better)", ["criterion"], registry=r)
        self.lifecycle = Counter("segmenter_segment_lifecycle",
                                 "Segments born, split, merged or retired", ["event"],
                                 registry=r)
        self.drift = Counter("segmenter_drift_detected",
                             "ADWIN detections of customers drifting away from segment centres",
                            registry=r)
        self.distance = Gauge("segmenter_assignment_distance",
                              "Mean scaled distance of assigned customers to their centre "
                              "(ADWIN estimate)", registry=r)
        self.cached = Gauge("segmenter_cached_customers",
                            "Customer states held in worker memory (re-scored without events)",
                            registry=r)
        self.busy = Counter(
            "segmenter_busy_seconds",
            "Hot-path time by stage: fetch (getmany, waiting included), parse, load (states "
            "from Redis), features (and assignment), learn, learn_wait (for the model-update "
            "helper; the next batch is read meanwhile), write (Redis, dead letters, model), "
            "flush (interval writes), commit", ["stage"], registry=r)
        self.rescored = Counter("segmenter_rescored_changes",
                                "Segment changes without a new event, by reason",
                                ["reason"], registry=r)
