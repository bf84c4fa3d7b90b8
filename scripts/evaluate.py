"""Segment quality on populations nobody tuned for: an evaluation matrix.

For each population of :mod:`scripts.populations` (3 to 8 personas, imbalanced shares,
overlapping personas, a purchase-only log, heavy-tailed spend, missing traits) and the real
CDNOW purchase log (:mod:`scripts.cdnow`), the pure core runs over the stream exactly as a
worker does with default settings (:mod:`scripts.online`), then:

- ARI of the final segments against the personas (where known);
- variance explained (1 - within-segment SS / total SS) by the online segments and by
  scikit-learn ``KMeans(n_init=10)`` with the same count and at its own best count in
  2..10 (silhouette), all on the same matrix: the customers' features as of the end of the
  stream, standardised by the online model's scaler (the space the model clusters in);
- the chosen segment count against the true one, and its range over all model versions;
- flips per model update (quiet customers the update moves).

Targets, per row: variance explained >= 0.9x batch k-means' with the same count; ARI >= 0.8
wherever batch k-means (same, best or true count) reaches 0.85; count within +-1 of the truth.

Usage::

    python -m scripts.evaluate [--quick] [--populations p3,cdnow] [--json]

Needs scikit-learn (``pip install -e '.[test]'``); the CDNOW row needs the log installed
(``pip install --no-deps lifetimes==0.11.3``), otherwise it is skipped with that hint.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import orjson

from models.core import SegmenterConfig
from models.features import DAY_MS
from scripts.online import final_matrix, run_online
from scripts.populations import POPULATIONS, Population, build
from scripts.report import render

VARIANCE_TARGET, ARI_TARGET, ARI_GATE = 0.9, 0.8, 0.85
BATCH_K = range(2, 11)


def variance_explained(z: np.ndarray, labels: list[str] | np.ndarray) -> float:
    """1 - within-group sum of squares / total sum of squares.

    >>> z = np.array([[0.0], [0.0], [2.0], [2.0]])
    >>> variance_explained(z, ["a", "a", "b", "b"]), variance_explained(z, ["a", "b", "a", "b"])
    (1.0, 0.0)
    """
    _, inv = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    total = float(((z - z.mean(0)) ** 2).sum())
    if total == 0:
        return 0.0
    sums = np.zeros((inv.max() + 1, z.shape[1]))
    np.add.at(sums, inv, z)
    sizes = np.bincount(inv)[:, None]
    within = float((z ** 2).sum() - ((sums ** 2) / sizes).sum())
    return round(1.0 - max(within, 0.0) / total, 4)


def batch_scan(z: np.ndarray, ks: list[int], seed: int) -> dict[int, dict[str, Any]]:
    """Batch k-means (k-means++, ``n_init=10``) for every count in ``ks``: labels, variance
    explained, silhouette (on up to 3,000 rows) and Davies-Bouldin index."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    out: dict[int, dict[str, Any]] = {}
    for k in sorted(set(ks)):
        if not 1 <= k < len(z):
            continue
        km = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(z)
        row: dict[str, Any] = {"labels": km.labels_,
                               "variance": round(1.0 - km.inertia_ / float(
                                   ((z - z.mean(0)) ** 2).sum()), 4)}
        if k >= 2:
            row["silhouette"] = round(float(silhouette_score(
                z, km.labels_, sample_size=min(len(z), 3000), random_state=seed)), 4)
            row["davies_bouldin"] = round(float(davies_bouldin_score(z, km.labels_)), 4)
        out[k] = row
    return out


def measure(pop: Population, cfg: SegmenterConfig, seed: int) -> dict[str, Any]:
    """One row of the matrix."""
    from sklearn.metrics import adjusted_rand_score

    started = time.perf_counter()
    run = run_online(pop.events, cfg)
    seg = run.seg
    ids, z = final_matrix(seg)
    online = [seg.states[c].segment for c in ids]
    k = seg.model.n_segments  # 0: no model yet (too few customers or events)
    same = max(k, 1)
    true_k = pop.true_k
    scan = batch_scan(z, [*BATCH_K, same] + ([true_k] if true_k else []), seed)
    best = max((b for b in BATCH_K if b in scan), key=lambda b: scan[b]["silhouette"])
    by_db = min((b for b in BATCH_K if b in scan), key=lambda b: scan[b]["davies_bouldin"])
    flips = run.flips or [0.0]
    ve = variance_explained(z, online)
    row: dict[str, Any] = {
        "population": pop.name, "shape": pop.shape, "customers": len(ids),
        "events": len(pop.events), "dead_letters": run.dead, "true_k": true_k,
        "k": k, "k_held": len(set(online)), "k_min": min(run.counts, default=0),
        "k_max": max(run.counts, default=0), "model_versions": len(run.counts),
        "batch_best_k": best, "batch_k_criterion": "silhouette", "batch_best_k_db": by_db,
        "variance_online": ve, "variance_batch_same_k": scan[same]["variance"],
        "variance_batch_best_k": scan[best]["variance"],
        "variance_ratio": (round(ve / scan[same]["variance"], 3) if k and
                           scan[same]["variance"] else 0.0),
        "flips_mean": round(float(np.mean(flips)), 4),
        "flips_p95": round(float(np.percentile(flips, 95)), 4),
        "lifecycle": dict(run.lifecycle), "core_seconds": round(run.seconds, 1),
        "silhouette_by_k": {b: scan[b]["silhouette"] for b in BATCH_K if b in scan},
    }
    if pop.truth is not None:
        truth = [pop.truth[c] for c in ids]

        def ari(labels: Any) -> float:
            return round(float(adjusted_rand_score(truth, labels)), 3)

        row.update(ari_online=ari(online), ari_batch_same_k=ari(scan[same]["labels"]),
                   ari_batch_best_k=ari(scan[best]["labels"]),
                   ari_batch_true_k=ari(scan[true_k]["labels"]) if true_k in scan else None)
    cut = seg.watermark - cfg.active_days * DAY_MS if cfg.active_days > 0 else -(1 << 62)
    active = np.array([seg.states[c].last_ts >= cut for c in ids])
    row["active_customers"], row["active_days"] = int(active.sum()), cfg.active_days
    if 0 < active.sum() < len(ids) and k:  # the model learns from these only
        part = batch_scan(z[active], [k], seed)[k]
        row["variance_online_active"] = variance_explained(z[active],
                                                           np.asarray(online)[active])
        row["variance_batch_same_k_active"] = part["variance"]
    row["targets"] = targets(row)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def targets(row: dict[str, Any]) -> dict[str, str]:
    """PASS / FAIL / n/a for the three targets of one row."""
    out = {"variance": "PASS" if row["variance_ratio"] >= VARIANCE_TARGET else "FAIL"}
    if "ari_online" not in row:
        out["ari"] = "n/a"
    else:
        batch = max(v for key in ("ari_batch_same_k", "ari_batch_best_k", "ari_batch_true_k")
                    if (v := row.get(key)) is not None)
        out["ari"] = ("n/a" if batch < ARI_GATE
                      else "PASS" if row["ari_online"] >= ARI_TARGET else "FAIL")
    out["count"] = ("n/a" if row["true_k"] is None
                    else "PASS" if abs(row["k"] - row["true_k"]) <= 1 else "FAIL")
    return out


def run_matrix(names: list[str], quick: bool, seed: int, customers: int | None = None,
               algorithm: str = "kmeans") -> dict[str, Any]:
    """Every row; ``quick``: small populations and a model that starts early (smoke test)."""
    n = customers or (300 if quick else 2000)
    cfg = (SegmenterConfig(algorithm=algorithm, seed=seed, warmup=150, update_every=1500)
           if quick else SegmenterConfig(algorithm=algorithm, seed=seed))
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            pop = build(name, n, seed, cdnow_every=20 if quick else 1)
        except FileNotFoundError as exc:
            skipped[name] = str(exc)
            continue
        rows.append(measure(pop, cfg, seed))
    return {"config": {"algorithm": algorithm, "warmup": cfg.warmup,
                       "update_every": cfg.update_every, "min_segments": cfg.min_segments,
                       "max_segments": cfg.max_segments, "customers": n, "seed": seed,
                       "quick": quick},
            "rows": rows, "skipped": skipped}


JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
"""Readable JSON; NumPy numbers and integer keys (segment counts) as JSON has them."""


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--populations", default=",".join(POPULATIONS),
                   help=f"comma-separated, of: {', '.join(POPULATIONS)}")
    p.add_argument("--customers", type=int, default=None,
                   help="customers per simulated population (default 2000; --quick 300)")
    p.add_argument("--quick", action="store_true",
                   help="300 customers per population, 1 in 20 of CDNOW's, warm-up 150 and "
                        "an update every 1,500 events (a smoke test)")
    p.add_argument("--algorithm", default="kmeans")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead")
    a = p.parse_args(argv)
    names = [n for n in a.populations.split(",") if n]
    unknown = set(names) - set(POPULATIONS)
    if unknown:
        p.error(f"unknown population(s): {', '.join(sorted(unknown))}")
    report = run_matrix(names, a.quick, a.seed, a.customers, a.algorithm)
    report["command"] = " ".join(["python -m scripts.evaluate", *argv])
    print(orjson.dumps(report, option=JSON_OPTIONS).decode()
          if a.json else render(report))


if __name__ == "__main__":
    main()
