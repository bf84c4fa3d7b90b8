"""What a worker tells people and probes about itself (``/health``, the dashboard)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker's state as people and probes see it (``/health``, the dashboard)."""

    started: bool
    """The worker consumes (clients are connected)."""
    problems: list[str]
    """Why it is not healthy; empty when it is."""
    processed: int
    """Events consumed since start."""
    dead_lettered: int
    """Invalid events sent to the dead-letter topic since start."""
    model_version: int
    """Version of the model this worker assigns with."""
    algorithm: str
    """The model's algorithm."""
    segments: int
    """Active segments."""
    criterion: dict[str, Any]
    """How the number of segments was chosen."""
    trains: bool
    """This worker holds the training lease."""
    drift_detections: int
    """Drifts detected since start."""
    relay_leader: bool
    """This worker relays change messages to Kafka."""
    waiting: str | None = None
    """Why there are no segments yet (no model), for people; None once there is a model."""
