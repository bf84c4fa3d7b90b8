"""Drift detection on the stream: River's ADWIN over the distance from each assigned customer
to their segment's centre. When customers land farther from every centre than they used to,
the segments no longer describe them: the model is refreshed and customers re-scored.

ADWIN gets one value per chunk of assignments (the chunk's mean distance), so the cost stays
one River call per ``chunk`` customers, not one per event.

Examples
--------
>>> import numpy as np
>>> m = DriftMonitor(chunk=10)
>>> rng = np.random.default_rng(0)
>>> any(m.observe(rng.normal(1.0, 0.1, 10)) for _ in range(100))
False
>>> any(m.observe(rng.normal(3.0, 0.1, 10)) for _ in range(100)), m.detections
(True, 1)
"""

from __future__ import annotations

import numpy as np
from river.drift import ADWIN


class DriftMonitor:
    """ADWIN on chunked mean assignment distances; counts upward drifts."""

    def __init__(self, chunk: int = 256, delta: float = 0.002) -> None:
        self.chunk = chunk
        self.adwin = ADWIN(delta=delta)
        self.detections = 0
        self.mean_distance = 0.0
        self._buffer: list[float] = []

    def observe(self, distances: np.ndarray) -> bool:
        """Feed distances; True when ADWIN sees the mean distance go *up* (drift)."""
        self._buffer.extend(distances.tolist())
        drifted = False
        while len(self._buffer) >= self.chunk:
            chunk, self._buffer = self._buffer[: self.chunk], self._buffer[self.chunk:]
            before = self.adwin.estimation
            self.adwin.update(float(np.mean(chunk)))
            # A drop in distance means segments fit better (e.g. after a refresh): no alarm.
            if self.adwin.drift_detected and self.adwin.estimation > before:
                self.detections += 1
                drifted = True
            self.mean_distance = float(self.adwin.estimation)
        return drifted
