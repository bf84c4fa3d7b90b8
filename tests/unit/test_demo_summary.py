"""The demo's summary line across polls of ``/health`` that get no answer (a worker busy
with the backfill answers late): last known figures, said so, and no rate across the gap."""

from __future__ import annotations

import re

from stream.demo import LastKnown


def rate(line: str) -> str:
    return line.split("events/s")[0].strip()


def test_a_poll_without_answer_keeps_the_last_figures_and_no_rate_spans_it() -> None:
    seen = LastKnown()
    first = seen.head(None, 0.0, 0, -1)
    assert "worker starting" in first and rate(first) == "-"
    seen.head({"status": "ok", "processed": 10_000, "model_version": 4}, 3.0, 900, 50)
    line = seen.head({"status": "ok", "processed": 40_000, "model_version": 5}, 6.0, 1000, 40)
    assert rate(line) == "10000" and "processed 40000" in line and "worker ok" in line
    lost = seen.head(None, 9.0, 1100, 30)
    # the last known figures, said to be so; never "processed 0", never a negative rate
    assert rate(lost) == "-"
    assert "processed 40000" in lost and "model v5" in lost
    assert "worker ok (no answer, last known)" in lost
    assert "starting" not in lost and "unavailable" not in lost
    after = seen.head({"status": "ok", "processed": 100_000, "model_version": 6}, 12.0, 1200, 9)
    assert rate(after) == "-"  # not computed across the failed poll
    assert "processed 100000" in after and "(no answer" not in after
    again = seen.head({"status": "ok", "processed": 130_000, "model_version": 6}, 15.0, 1200, 0)
    assert rate(again) == "10000"
    assert all(not re.search(r"^\s*-\d", rate(x)) for x in (first, line, lost, after, again))


def test_problems_and_degradations_are_named() -> None:
    seen = LastKnown()
    line = seen.head({"status": "unavailable", "processed": 5,
                      "reasons": ["Redis unreachable: timeout"], "degraded": []}, 1.0, 0, 0)
    assert "worker unavailable (Redis unreachable: timeout)" in line
    line = seen.head({"status": "ok", "processed": 9, "reasons": [],
                      "degraded": ["lag not read: TimeoutError()"]}, 2.0, 0, 0)
    assert "worker ok (degraded: lag not read: TimeoutError())" in line
    assert rate(line) == "4"


def test_a_restarted_worker_gives_no_negative_rate() -> None:
    seen = LastKnown()
    seen.head({"status": "ok", "processed": 50_000}, 1.0, 0, 0)
    line = seen.head({"status": "ok", "processed": 100}, 4.0, 0, 0)
    assert rate(line) == "-" and "processed 100" in line
