"""RFM segments (contract §2.2): the bucketed population sketch against exact batch
quintiles, following a changing population, and recency moving with others' purchases."""

from __future__ import annotations

import random

import pytest

from models.rfm import GRID, HOUR_MS, Population, Quintiles, bucket_key, exact_scores
from models.simulator import ShopSimulator
from scripts.cdnow import cdnow_path, load_cdnow
from scripts.rfm_agreement import agreement, states_of

DAY = 86_400_000


def test_the_sketch_agrees_with_exact_quintiles_on_a_simulated_population() -> None:
    sim = ShopSimulator(2000, seed=11, days=45)
    got = agreement(states_of(sorted(sim.history(), key=lambda e: e["timestamp"])))
    assert got["buyers"] > 1000
    assert min(got["r"], got["f"], got["m"]) >= 0.97, got
    assert got["all"] >= 0.95, got
    assert got["segment"] >= 0.95, got


@pytest.mark.skipif(cdnow_path() is None, reason="pip install --no-deps lifetimes==0.11.3")
def test_the_sketch_agrees_with_exact_quintiles_on_the_cdnow_log() -> None:
    got = agreement(states_of(load_cdnow(every=3)))
    assert got["buyers"] > 7000
    assert got["all"] >= 0.95, got
    assert got["segment"] >= 0.95, got


def test_the_population_follows_customers_whose_values_change() -> None:
    """Moving a buyer from their old buckets to their new ones, in any order, gives the
    histogram of the final values: what seg:rfm holds after any interleaving of writes."""
    rng = random.Random(3)
    values = {c: (0, 0, 0.0) for c in range(500)}
    live = Population()
    for _ in range(5000):
        c = rng.randrange(500)
        ts, orders, revenue = values[c]
        new = (ts + rng.randrange(1, 50) * HOUR_MS, orders + 1, revenue + rng.uniform(0, 300))
        if orders:
            live.remove(bucket_key(ts, orders, revenue))
        live.add(bucket_key(*new))
        values[c] = new
    fresh = Population()
    for v in values.values():
        if v[1]:
            fresh.add(bucket_key(*v))
    assert live == fresh
    assert live.size == sum(1 for v in values.values() if v[1])
    for c in list(values)[:100]:  # erasing takes them out completely
        if values[c][1]:
            live.remove(bucket_key(*values[c]))
    assert all(n > 0 for h in (live.r, live.f, live.m) for n in h.values())


def test_a_champion_drifts_towards_at_risk_as_others_buy_later() -> None:
    pop = Population()
    champion = bucket_key(100 * DAY, 40, 5000.0)
    pop.add(champion)
    rng = random.Random(1)
    others = [bucket_key(rng.randrange(0, 100) * DAY, rng.randrange(1, 10),
                         rng.uniform(10, 500)) for _ in range(200)]
    for k in others:
        pop.add(k)
    assert pop.quintiles().name(champion) == "Champions"
    # 60 days of event time pass; the champion buys nothing, the others keep buying
    for i, k in enumerate(others):
        pop.remove(k)
        pop.add(bucket_key(100 * DAY + (1 + i % 60) * DAY, k[1] + 1, 100.0))
    q = pop.quintiles()
    r, f, _ = q.scores(champion)
    assert r == 1 and f == 5
    assert q.name(champion) == "Can't Lose Them"  # the At Risk column of the best buyers


def test_scores_and_names_cover_the_standard_map() -> None:
    names = {n for row in GRID.values() for n in row}
    assert names == {"Champions", "Loyal Customers", "Potential Loyalists", "New Customers",
                     "Promising", "Need Attention", "About To Sleep", "At Risk",
                     "Can't Lose Them", "Hibernating", "Lost"}
    assert Quintiles().of(None) is None and Quintiles().name(None) == ""
    # with no population yet a first buyer is compared with nobody
    assert Quintiles().of(bucket_key(DAY, 1, 5.0)) == {"r": 3, "f": 3, "m": 3,
                                                       "segment": "Need Attention"}


def test_exact_scores_give_fifths_of_distinct_values() -> None:
    values = list(range(1000))
    random.Random(2).shuffle(values)
    scores = exact_scores(values)
    assert [scores.count(s) for s in range(1, 6)] == [200] * 5
    assert all(s == 1 + v // 200 for v, s in zip(values, scores, strict=True))


def test_cached_buyers_get_their_name_again_when_the_population_moves() -> None:
    """What a worker writes without events: the names that moved with the quintiles, each
    once, and none while nothing moved."""
    from models.config import SegmenterConfig
    from models.core import Segmenter

    sim = ShopSimulator(300, seed=2, days=20)
    states = states_of(sorted(sim.history(), key=lambda e: e["timestamp"]))
    seg = Segmenter(SegmenterConfig(cache_size=10**6))
    seg.cache.load({s.customer_id: s for s in states})
    pop = Population()
    for s in states:
        if s.orders_total:
            pop.add(bucket_key(s.last_purchase_ts, s.orders_total, round(s.spend_total, 2)))
    seg.assigner.rfm = pop.quintiles()
    first = [m for _ in range(3) for m in seg.assigner.rfm_moves(120)]
    assert len(first) == sum(1 for s in states if s.orders_total)  # never written: all
    assert seg.assigner.rfm_moves(10**6) == []
    # the latest buyers buy again much later: everyone else's recency falls
    later = max(s.last_purchase_ts for s in states) + 30 * DAY
    for s in sorted(states, key=lambda s: -s.last_purchase_ts)[:100]:
        if s.orders_total:
            pop.remove(bucket_key(s.last_purchase_ts, s.orders_total, round(s.spend_total, 2)))
            pop.add(bucket_key(later, s.orders_total + 1, round(s.spend_total, 2)))
    seg.assigner.rfm = pop.quintiles()
    moved = seg.assigner.rfm_moves(10**6)
    assert moved and all(seg.states[c].rfm == name for c, _, _, name in moved)
    assert seg.assigner.rfm_moves(10**6) == []


def test_grid_from_the_joint_buckets_scores_each_buyer_as_alone() -> None:
    """The dashboard's grid (joint recency x frequency buckets, scored as a whole) gives
    every buyer the cell their own scores name, and each cell its segment of the map."""
    import random

    from models.rfm import GRID, Population, bucket_key, grid
    rnd = random.Random(7)
    pop, joint, own = Population(), {}, {}
    for _ in range(3000):
        key = bucket_key(rnd.randrange(0, 2000) * 3_600_000, 1 + int(rnd.expovariate(0.5)),
                         rnd.uniform(5, 900))
        pop.add(key)
        joint[key[:2]] = joint.get(key[:2], 0) + 1
    q = pop.quintiles()
    for (rb, fb), n in joint.items():
        r, f, _ = q.scores((rb, fb, 0))
        own[r, f] = own.get((r, f), 0) + n
    g = grid(((rb, fb, n) for (rb, fb), n in joint.items()), q)
    cells = {(c["r"], c["f"]): c for row in g["rows"] for c in row}
    assert len(cells) == 25 and g["buyers"] == 3000
    assert {k: c["customers"] for k, c in cells.items() if c["customers"]} == own
    assert all(c["segment"] == GRID[r][f - 1] for (r, f), c in cells.items())
    assert sum(g["segments"].values()) == 3000


def test_a_buyer_tied_with_the_whole_population_is_not_lost() -> None:
    # the demo shop's e2e test showed "Lost" for a shopper who had just bought twice: the
    # only buyer, or buyers who all bought in the same hour, tie every quintile boundary,
    # and ties scored the lowest of the quintiles they span
    alone = Population()
    key = bucket_key(10 * HOUR_MS, 2, 60.0)
    alone.add(key)
    assert alone.quintiles().scores(key) == (3, 3, 3) == Quintiles().scores(key)
    same_hour = Population()
    for orders in (1, 1, 2, 2, 3):
        same_hour.add(bucket_key(10 * HOUR_MS, orders, 20.0 * orders))
    q = same_hour.quintiles()
    assert {q.scores(bucket_key(10 * HOUR_MS, o, 20.0 * o))[0] for o in (1, 2, 3)} == {3}
    assert "Lost" not in {q.name(bucket_key(10 * HOUR_MS, o, 20.0 * o)) for o in (1, 2, 3)}
    # distinct values keep their fifths, the tie rule changes nothing there
    assert exact_scores(list(range(1, 11))) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
