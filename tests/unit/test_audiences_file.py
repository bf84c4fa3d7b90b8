"""``scripts/audiences_20.json``: twenty realistic audiences over the simulator's events, as
``SEGMENTER_AUDIENCES_FILE`` loads them (``python -m scripts.bench --variant
SEGMENTER_AUDIENCES_FILE=scripts/audiences_20.json`` measures their cost)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from models.audiences import RFM_NAMES, parse_audience
from models.simulator import PERSONAS, ShopSimulator
from models.traits import TRAIT_NAMES
from scripts.bench import setting
from stream.settings import Settings

FILE = Path(__file__).resolve().parents[2] / "scripts" / "audiences_20.json"


def kinds(cond: dict[str, Any], seen: Counter[str]) -> None:
    for key in ("all", "any"):
        if key in cond:
            seen[key] += 1
            for c in cond[key]:
                kinds(c, seen)
            return
    if "not" in cond:
        seen["not"] += 1
        kinds(cond["not"], seen)
    elif "event" in cond:
        seen["event_" + ("count" if "count" in cond else "sum")] += 1
        seen["event:" + cond["event"]] += 1
    else:
        seen[next(k for k in ("trait", "segment", "rfm") if k in cond)] += 1
        if "trait" in cond:
            seen["trait:" + cond["trait"]] += 1
        if "rfm" in cond:
            seen["rfm:" + cond["rfm"]] += 1


def test_twenty_audiences_parse_and_mix_every_kind_of_condition() -> None:
    doc = json.loads(FILE.read_text())
    assert len(doc) == 20
    seen: Counter[str] = Counter()
    for aid, body in doc.items():
        audience = parse_audience(aid, body)  # raises InvalidAudience naming the problem
        assert audience.name and body["name"]
        kinds(body["where"], seen)
    for kind in ("trait", "event_count", "event_sum", "segment", "rfm", "all", "any", "not"):
        assert seen[kind], f"no {kind} condition"
    # the names they use are the ones the simulator's events give
    sim = list(ShopSimulator(customers=200, seed=1, days=30).history())
    types = {e["type"] for e in sim}
    assert {k.split(":", 1)[1] for k in seen if k.startswith("event:")} <= types
    assert {k.split(":", 1)[1] for k in seen if k.startswith("trait:")} <= set(TRAIT_NAMES)
    assert {k.split(":", 1)[1] for k in seen if k.startswith("rfm:")} <= RFM_NAMES
    categories = {c for p in PERSONAS for c in p.categories}
    countries = {e["properties"].get("country") for e in sim}
    text = FILE.read_text()
    for cat in ("fashion", "electronics", "beauty", "home", "garden"):
        assert cat in categories and f'"{cat}"' in text
    assert {"DE", "FR", "GB", "NL", "ES", "IT"} <= countries


def test_bench_and_the_settings_take_the_file() -> None:
    name, value = setting("SEGMENTER_AUDIENCES_FILE=scripts/audiences_20.json")
    s = Settings.from_env({name: value})
    assert s.audiences_file == "scripts/audiences_20.json"
    # relative to the repository root, where bench starts its workers
    assert (FILE.parents[1] / s.audiences_file).samefile(FILE)
