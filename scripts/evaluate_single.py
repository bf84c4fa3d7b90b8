"""Segment quality of the online models on the simulator's own shop, in detail (the matrix
over populations of other shapes is ``python -m scripts.evaluate``).

Runs the pure core (``models.core.Segmenter``, exactly what a worker runs, minus I/O) over a
simulated shop with hidden personas, for each algorithm, and reports:

- ARI and NMI of the final segments against the simulator's personas (ground truth);
- against scikit-learn ``KMeans`` (k-means++, ``n_init=10``, same number of segments) fitted in
  one batch on the customers' *final* features: ARI and the inertia ratio online / batch;
- the same for a baseline that learns the way the issue warns against (River KMeans
  ``learn_one`` on every event's intermediate features), to show what learning from current
  customers buys;
- stability: the share of customers whose segment flips at a model update *without new
  behaviour* (same features, as of their last event: old model vs new model), mean and p95
  over updates;
- throughput of the core (events/s, single thread) and segment lifecycle events.

Usage::

    python -m scripts.evaluate_single [--customers 5000] [--days 30] [--algorithms kmeans,dbstream]

Needs scikit-learn (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import orjson

from models.core import SegmenterConfig
from models.features import FEATURE_NAMES, to_model_matrix, vector
from models.simulator import ShopSimulator
from scripts.online import run_online


def per_event_river(events: list[dict[str, Any]], cfg: SegmenterConfig, k: int,
                    seed: int) -> Any:
    """The naive design: River scaler + KMeans ``learn_one`` on every event's features."""
    from river import cluster, preprocessing

    from models.events import parse_event
    from models.features import CustomerState, update

    scaler = preprocessing.StandardScaler()
    km = cluster.KMeans(n_clusters=k, halflife=cfg.step, seed=seed)
    states: dict[str, CustomerState] = {}
    hl = cfg.half_life_days * 86_400_000
    for e in events:
        ev = parse_event(orjson.dumps(e), e["customer_id"].encode())
        st = states.setdefault(ev.customer_id, CustomerState(ev.customer_id))
        update(st, ev, hl)
        x = dict(zip(FEATURE_NAMES, to_model_matrix([vector(st, hl)])[0].tolist(),
                     strict=True))
        scaler.learn_one(x)
        km.learn_one(scaler.transform_one(x))
    return scaler, km


def evaluate(customers: int, days: float, algorithms: list[str], seed: int,
             naive: bool) -> dict[str, Any]:
    """All figures, as a JSON-able dict."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    sim = ShopSimulator(customers, seed=seed, days=days)
    events = list(sim.history())
    report: dict[str, Any] = {"customers": customers, "days": days, "events": len(events)}
    for alg in algorithms:
        cfg = SegmenterConfig(algorithm=alg, seed=seed)
        run = run_online(events, cfg, batch=5000)
        seg = run.seg
        ids = sorted(seg.states)
        truth = [sim.truth[c] for c in ids]
        x = to_model_matrix([vector(seg.states[c], seg.half_life_ms, seg.watermark)
                             for c in ids])
        z = seg.model.scale(x)  # one space for both: the online model's current scaling
        labels, _ = seg.model.assign_scaled(z)
        online = [seg.states[c].segment for c in ids]
        k = seg.model.n_segments
        batch = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(z)
        inertia = float(((z - seg.model.centres_scaled()[labels]) ** 2).sum())
        flips = run.flips or [0.0]
        report[alg] = {
            "segments": k,
            "criterion": seg.model.criterion,
            "ari_truth": round(adjusted_rand_score(truth, online), 3),
            "nmi_truth": round(normalized_mutual_info_score(truth, online), 3),
            "ari_vs_batch": round(adjusted_rand_score(batch.labels_, online), 3),
            "inertia_ratio": round(inertia / batch.inertia_, 3),
            "batch_ari_truth": round(adjusted_rand_score(truth, batch.labels_), 3),
            "flips_mean": round(float(np.mean(flips)), 4),
            "flips_p95": round(float(np.percentile(flips, 95)), 4),
            "model_updates": len(run.flips),
            "lifecycle": dict(run.lifecycle),
            "events_per_s": round(len(events) / run.seconds),
        }
        if naive and alg == "kmeans":
            scaler, km = per_event_river(events, cfg, k, seed)
            zn = np.array([[scaler.transform_one(dict(zip(FEATURE_NAMES, r, strict=True)))[n]
                            for n in FEATURE_NAMES] for r in x.tolist()])
            naive_labels = [km.predict_one(dict(zip(FEATURE_NAMES, r, strict=True)))
                            for r in zn.tolist()]
            c = np.array([[km.centers[i][n] for n in FEATURE_NAMES] for i in range(k)])
            nb = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(zn)
            report["river_per_event"] = {
                "ari_truth": round(adjusted_rand_score(truth, naive_labels), 3),
                "ari_vs_batch": round(adjusted_rand_score(nb.labels_, naive_labels), 3),
                "inertia_ratio": round(float(((zn - c[naive_labels]) ** 2).sum())
                                       / nb.inertia_, 3),
            }
    return report


JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
"""Readable JSON; NumPy numbers and integer keys (segment counts) as JSON has them."""


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--algorithms", default="kmeans,dbstream")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--no-naive", action="store_true",
                   help="skip the per-event River baseline (slow: one River call per event)")
    a = p.parse_args(argv)
    report = evaluate(a.customers, a.days, a.algorithms.split(","), a.seed, not a.no_naive)
    print(orjson.dumps(report, option=JSON_OPTIONS).decode())


if __name__ == "__main__":
    main()
