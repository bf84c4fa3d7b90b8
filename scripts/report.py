"""The evaluation matrix (``scripts.evaluate``) as a markdown table.

Examples
--------
>>> row = {"population": "p3", "shape": "3 personas", "customers": 10, "events": 99,
...        "true_k": 3, "k": 3, "k_held": 3, "k_min": 3, "k_max": 4, "batch_best_k": 3,
...        "ari_online": 0.9, "ari_batch_same_k": 0.95, "ari_batch_best_k": 0.95,
...        "ari_batch_true_k": 0.95, "variance_online": 0.5, "variance_batch_same_k": 0.52,
...        "variance_batch_best_k": 0.52, "variance_ratio": 0.962, "flips_mean": 0.01,
...        "flips_p95": 0.02, "dead_letters": 0,
...        "targets": {"variance": "PASS", "ari": "PASS", "count": "PASS"}}
>>> text = render({"command": "python -m scripts.evaluate", "rows": [row], "skipped": {}})
>>> text.splitlines()[4].split(" | ")[:4]
['| p3', '10', '3', '3 (3-4)']
"""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "population", "customers", "true k", "online k (min-max over versions)",
    "batch best k (silhouette)", "ARI online", "ARI batch same k / best k / true k",
    "var. expl. online", "var. expl. batch same k", "var. expl. batch best k",
    "ratio online / batch same k", "flips per update mean (p95)", "variance >= 0.9x",
    "ARI >= 0.8", "count +-1",
)
"""The table's columns, in order (the unit test checks every one is there)."""


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def cells(row: dict[str, Any]) -> list[str]:
    """One table row, in :data:`COLUMNS` order."""
    t = row["targets"]
    ari_batch = " / ".join(_f(row.get(key)) for key in
                           ("ari_batch_same_k", "ari_batch_best_k", "ari_batch_true_k"))
    return [
        row["population"], str(row["customers"]), _f(row["true_k"]),
        f"{row['k']} ({row['k_min']}-{row['k_max']})", str(row["batch_best_k"]),
        _f(row.get("ari_online")), ari_batch if "ari_online" in row else "n/a",
        _f(row["variance_online"]), _f(row["variance_batch_same_k"]),
        _f(row["variance_batch_best_k"]), _f(row["variance_ratio"], 2),
        f"{row['flips_mean']:.2%} ({row['flips_p95']:.1%})",
        t["variance"], t["ari"], t["count"],
    ]


def render(report: dict[str, Any]) -> str:
    """The whole report: the command, the table, the populations' shapes and skips."""
    lines = [f"Command: `{report['command']}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in report["rows"]]
    lines.append("")
    for r in report["rows"]:
        note = ""
        if "variance_online_active" in r:
            note = (f"; {r['active_customers']:,} active in the last "
                    f"{r['active_days']:g} days (what the model learns from): variance "
                    f"explained {r['variance_online_active']:.3f} "
                    f"online vs {r['variance_batch_same_k_active']:.3f} batch same k")
        lines.append(f"- `{r['population']}`: {r['shape']}; {r['events']:,} events, "
                     f"{r['dead_letters']} refused{note}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"- `{name}`: skipped ({why})")
    return "\n".join(lines)
