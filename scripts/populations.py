"""Populations of different shapes for the segment-quality matrix (``scripts.evaluate``).

Every population is a seeded, deterministic event stream in event-time order with its ground
truth (the persona of every customer) where one exists. They are built from one persona
library (:data:`models.simulator.PERSONAS` plus :data:`EXTRA`) and the simulator's options;
none is shaped after what the model does well. The real purchase log is in
:mod:`scripts.cdnow`.

Examples
--------
>>> pop = build("purchase_only", customers=40, seed=1, days=20)
>>> pop.true_k, {e["type"] for e in pop.events}, sorted(pop.events[0]["properties"])
(5, {'purchase'}, ['amount', 'currency'])
>>> set(pop.truth) == {e["customer_id"] for e in pop.events}  # only who appears
True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from models.simulator import PERSONAS, Persona, ShopSimulator

__all__ = ["EXTRA", "POPULATIONS", "Population", "build"]


@dataclass(frozen=True, slots=True)
class Population:
    """One evaluation population."""

    name: str
    shape: str
    """What is special about it, in a few words."""
    events: list[dict[str, Any]]
    """Events in event-time order (per customer strictly, as a real stream)."""
    truth: dict[str, str] | None
    """Persona of every customer that appears in :attr:`events`; None: unknown (real data)."""

    @property
    def true_k(self) -> int | None:
        """Number of personas present, when known."""
        return len(set(self.truth.values())) if self.truth is not None else None


# Three more kinds of shopper, so that populations are not all the demo's six.
EXTRA: tuple[Persona, ...] = (
    Persona("researcher", 1.0, 0.35, (4, 8), (6, 12), (4, 8), 0.08, 0.5, (160, 40), 0.15, 0.3,
            (("organic", 0.6), ("direct", 0.3), ("referral", 0.1)), ("electronics", "books"),
            (42, 9), (72_000, 15_000), (2.4, 1.0), 0.6),
    Persona("app_regular", 1.0, 1.1, (1, 2), (1, 3), (0, 1), 0.45, 0.8, (18, 5), 0.92, 0.2,
            (("direct", 0.7), ("email", 0.2), ("social", 0.1)), ("home", "beauty"),
            (30, 6), (42_000, 9_000), (3.0, 1.0), 0.7),
    Persona("gift_buyer", 1.0, 0.12, (2, 5), (2, 5), (1, 3), 0.5, 0.85, (120, 35), 0.3, 0.75,
            (("email", 0.4), ("paid", 0.4), ("direct", 0.2)), ("games", "beauty", "books"),
            (55, 8), (65_000, 15_000), (2.0, 0.8), 0.8),
)
_ALL = {p.name: p for p in PERSONAS + EXTRA}


def _pick(names: str, weights: tuple[float, ...] | None = None) -> tuple[Persona, ...]:
    """Personas by name, with ``weights`` (default: equal shares)."""
    chosen = names.split()
    w = weights or (1.0,) * len(chosen)
    return tuple(replace(_ALL[n], weight=x) for n, x in zip(chosen, w, strict=True))


def _twin(p: Persona) -> Persona:
    """A near neighbour of ``p``: visits 1.5x as often, spends 1.5x, a bit more mobile and
    evening; everything else the same (the two overlap)."""
    return replace(p, name=f"{p.name}_b", sessions_per_day=p.sessions_per_day * 1.5,
                   amount=(p.amount[0] * 1.5, p.amount[1] * 1.5),
                   mobile=min(1.0, p.mobile + 0.25), evening=min(1.0, p.evening + 0.2))


_BASE3 = "bargain_hunter loyal_big_spender window_shopper"
# name -> (shape, personas, simulator options, days)
_SPECS: dict[str, tuple[str, tuple[Persona, ...], dict[str, Any], float]] = {
    "reference": ("the simulator's own 6 personas (the demo's shop)", PERSONAS, {}, 30),
    "p3": ("3 personas, equal shares", _pick(_BASE3), {}, 30),
    "p5_unseen": ("5 personas, 3 never tuned on",
                  _pick("researcher app_regular gift_buyer bargain_hunter lapsing_customer"),
                  {}, 30),
    "p8": ("8 personas", PERSONAS + _pick("researcher app_regular"), {}, 30),
    "imbalanced": ("4 personas, shares 20:6:2:1",
                   _pick("bargain_hunter window_shopper loyal_big_spender "
                         "mobile_evening_browser", (20, 6, 2, 1)), {}, 30),
    "overlapping": ("3 personas and a near twin of each",
                    _pick(_BASE3) + tuple(_twin(p) for p in _pick(_BASE3)), {}, 30),
    "purchase_only": ("orders only: no browsing, devices, channels or traits",
                      _pick("loyal_big_spender bargain_hunter lapsing_customer app_regular "
                            "gift_buyer"), {"purchase_only": True}, 90),
    "heavy_tail": ("the 6 personas, lognormal order values (log-sd 1)",
                   tuple(replace(p, spend_tail=1.0) for p in PERSONAS), {}, 30),
    "missing_traits": ("the 6 personas, 25% of customers ever give demographics",
                       PERSONAS, {"trait_share": 0.25}, 30),
}
POPULATIONS: tuple[str, ...] = (*_SPECS, "cdnow")
"""Every population :func:`build` knows, in report order."""


def build(name: str, customers: int, seed: int, days: float | None = None,
          cdnow_every: int = 1) -> Population:
    """Generate population ``name`` (``days``: its default span unless given; ``cdnow``: the
    real log, every ``cdnow_every``-th customer)."""
    if name == "cdnow":
        from scripts.cdnow import load_cdnow

        return Population("cdnow", "real: CDNOW purchase log 1997-98",
                          load_cdnow(every=cdnow_every), None)
    shape, personas, options, span = _SPECS[name]
    sim = ShopSimulator(customers, seed=seed, days=span if days is None else days,
                        personas=personas, prefix=f"{name[:2]}", **options)
    events = list(sim.history())
    seen = {e["customer_id"] for e in events}
    return Population(name, shape, events, {c: p for c, p in sim.truth.items() if c in seen})
