"""The evaluation matrix (``python -m scripts.evaluate``) runs end to end on small populations
and reports every column with values in their possible ranges. The targets themselves are
measured on the full matrix (BENCHMARKS.md), not asserted here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import evaluate
from scripts.cdnow import to_events
from scripts.report import COLUMNS

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def report() -> dict:
    out = evaluate.run_matrix(["p3", "purchase_only"], quick=True, seed=5)
    out["command"] = "python -m scripts.evaluate --quick --populations p3,purchase_only"
    return out


def test_markdown_has_every_column_and_row(report: dict) -> None:
    text = evaluate.render(report)
    lines = text.splitlines()
    assert lines[0] == f"Command: `{report['command']}`"
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == list(COLUMNS)
    rows = [line for line in lines if line.startswith("| p3 ") or
            line.startswith("| purchase_only ")]
    assert len(rows) == 2
    assert all(len(r.strip("|").split("|")) == len(COLUMNS) for r in rows)


def test_values_are_in_their_ranges(report: dict) -> None:
    rows = {r["population"]: r for r in report["rows"]}
    assert set(rows) == {"p3", "purchase_only"} and report["skipped"] == {}
    assert rows["p3"]["true_k"] == 3 and rows["purchase_only"]["true_k"] == 5
    for r in rows.values():
        assert r["dead_letters"] == 0  # each customer's events arrive in event-time order
        assert r["customers"] > 100 and r["events"] > r["customers"]
        assert r["model_versions"] >= 2
        assert 1 <= r["k_min"] <= r["k"] <= r["k_max"] <= 8 and 1 <= r["k_held"] <= r["k"]
        assert 2 <= r["batch_best_k"] <= 10 and r["batch_k_criterion"] == "silhouette"
        assert r["batch_best_k"] == max(r["silhouette_by_k"], key=r["silhouette_by_k"].get)
        for key in ("ari_online", "ari_batch_same_k", "ari_batch_best_k", "ari_batch_true_k"):
            assert -0.5 <= r[key] <= 1.0, key
        for key in ("variance_online", "variance_batch_same_k", "variance_batch_best_k"):
            assert 0.0 <= r[key] <= 1.0, key
        # batch k-means minimises within-segment SS: it explains at least as much, up to
        # its own local optimum
        assert r["variance_ratio"] <= 1.05
        assert 0.0 <= r["flips_mean"] <= 1.0 and 0.0 <= r["flips_p95"] <= 1.0
        assert set(r["targets"]) == {"variance", "ari", "count"}
        assert set(r["targets"].values()) <= {"PASS", "FAIL", "n/a"}
    # the purchase-only log has nothing but orders: the model sees no views, carts, devices
    assert rows["purchase_only"]["events"] < rows["p3"]["events"] / 4


def test_json_output_is_the_same_report(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate.main(["--quick", "--customers", "200", "--populations", "p3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == ("python -m scripts.evaluate --quick --customers 200 "
                              "--populations p3 --json")
    assert [r["population"] for r in out["rows"]] == ["p3"]
    assert out["rows"][0]["customers"] <= 200


def test_variance_explained_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    labels = rng.integers(0, 4, 50).astype(str)
    within = sum(((z[labels == g] - z[labels == g].mean(0)) ** 2).sum() for g in set(labels))
    total = ((z - z.mean(0)) ** 2).sum()
    assert evaluate.variance_explained(z, labels) == pytest.approx(1 - within / total, abs=1e-4)


def test_cdnow_rows_become_ordered_purchases() -> None:
    lines = ["customer_id date number_of_cds dollar_value",
             "00003 19970330  2   20.76", "00003 19970102  2   20.76", "00004 19970101 2 29.33"]
    events = to_events(lines)
    assert [e["customer_id"] for e in events] == ["cd00004", "cd00003", "cd00003"]
    assert [e["timestamp"][:10] for e in events] == ["1997-01-01", "1997-01-02", "1997-03-30"]
    assert len({e["event_id"] for e in events}) == 3
    assert {e["type"] for e in events} == {"purchase"}
    assert to_events(lines, every=4) == [events[0]]
