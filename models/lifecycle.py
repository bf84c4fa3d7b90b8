"""Stable segment ids across model updates, and the lifecycle events between them.

When the clustering changes (a refresh, a new number of segments, a density re-cluster), the
new centres are matched to the old ones by the customers they share on a sample: pairs that
share the most customers keep the id, as long as at least half of the smaller of the two is
shared, and the old segment is a real part (a fifth or more) of the new one; then an old
segment whose customers mostly went, together, to a centre still unclaimed continues there.
What is left over is a lifecycle event:

- ``born``: a new segment (a new id) that did not come out of one surviving segment;
- ``split``: a new segment carved out of a segment that survives (``from``);
- ``merged``: a segment whose customers now mostly belong to a surviving one (``into``);
- ``retired``: a segment that ended with no clear successor (or no customers).

Ids are never reused: a retired ``s3`` stays retired.

Examples
--------
>>> import numpy as np
>>> z = np.array([[0.0], [0.1], [5.0], [5.1], [9.0], [9.1]])
>>> old = np.array([[0.05], [5.05]])              # s0, s1; the points near 9 sit in s1
>>> new = np.array([[0.05], [5.05], [9.05]])      # a third group appears
>>> ids, events, nxt = match_ids(["s0", "s1"], old, new, z, next_id=2)
>>> ids, [(e["event"], e["segment"], e.get("from")) for e in events], nxt
(['s0', 's1', 's2'], [('split', 's2', 's1')], 3)
>>> ids, events, _ = match_ids(ids, new, np.array([[0.05], [7.0]]), z, next_id=3)
>>> ids, [(e["event"], e["segment"], e.get("into")) for e in events]
(['s0', 's1'], [('merged', 's2', 's1')])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.clustering import sq_distances

SAME_SEGMENT = 0.5
"""Two centres can be the same segment when they share at least this share of the smaller
one's customers on the sample..."""
MIN_PART = 0.2
"""...and the old segment's customers are at least this share of the new centre's: a segment
dwindling to a handful of customers must not lend its id (and meaning) to a big group made
of another segment's customers, which is a split of that segment."""


def match_ids(
    old_ids: list[str], old: np.ndarray, new: np.ndarray, z: np.ndarray, next_id: int
) -> tuple[list[str], list[dict[str, Any]], int]:
    """Ids for the ``new`` centres, the lifecycle events, and the next free id number.

    ``old``/``new`` are centres and ``z`` a sample of current customers, all in the same
    (scaled) space.
    """
    if not len(old_ids):
        ids = [f"s{next_id + i}" for i in range(len(new))]
        return ids, [{"event": "born", "segment": s} for s in ids], next_id + len(new)
    lo = sq_distances(z, old).argmin(1)
    ln = sq_distances(z, new).argmin(1)
    overlap = np.zeros((len(old), len(new)))
    np.add.at(overlap, (lo, ln), 1)
    size_o, size_n = overlap.sum(1), overlap.sum(0)
    smaller = np.minimum(size_o[:, None], size_n[None, :])
    contained = np.where(smaller > 0, overlap / np.maximum(smaller, 1), 0.0)
    # Without customers in the sample, centres that sit close are the same segment.
    near = sq_distances(old, new)
    new_ids: list[str | None] = [None] * len(new)
    taken: set[int] = set()
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        o, n = divmod(int(flat), len(new))
        if overlap[o, n] == 0:
            break
        if (contained[o, n] >= SAME_SEGMENT and overlap[o, n] >= MIN_PART * size_n[n]
                and o not in taken and new_ids[n] is None):
            new_ids[n] = old_ids[o]
            taken.add(o)
    # An old segment whose customers mostly moved, together, to a centre nobody claimed
    # continues there (re-partitions would otherwise rename it: "merged" into a newcomer).
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        o, n = divmod(int(flat), len(new))
        if overlap[o, n] == 0:
            break
        if (o not in taken and new_ids[n] is None and overlap[o, n] >= 0.5 * size_o[o]
                and overlap[o, n] >= MIN_PART * size_n[n]):
            new_ids[n] = old_ids[o]
            taken.add(o)
    for n in range(len(new)):  # empty on both sides: match by distance
        if new_ids[n] is None and size_n[n] == 0:
            o = int(near[:, n].argmin())
            if o not in taken and size_o[o] == 0:
                new_ids[n] = old_ids[o]
                taken.add(o)
    events: list[dict[str, Any]] = []
    for n in range(len(new)):
        if new_ids[n] is None:
            sid = f"s{next_id}"
            next_id += 1
            new_ids[n] = sid
            parent = int(overlap[:, n].argmax()) if size_n[n] else -1
            if parent >= 0 and parent in taken:
                events.append({"event": "split", "segment": sid, "from": old_ids[parent]})
            else:
                events.append({"event": "born", "segment": sid})
    final = [s for s in new_ids if s is not None]
    for o in range(len(old)):
        if o in taken:
            continue
        heir = int(overlap[o].argmax()) if size_o[o] else -1
        if heir >= 0 and overlap[o, heir] >= 0.5 * size_o[o]:
            events.append({"event": "merged", "segment": old_ids[o], "into": final[heir]})
        else:
            events.append({"event": "retired", "segment": old_ids[o]})
    return final, events, next_id
