"""What this worker last wrote of each customer's traits, so a write sends only the trait
fields that changed.

Writing the ~15 trait fields of the customer hash was most of a write script's Redis time
(``HSET`` of every field, each one looked up and replaced in the listpack, ~22 of ~38 µs of
server CPU per refresh write) although most writes change two or three of them (``events``,
``last_seen``). A worker remembers, per customer, the traits it last wrote with the head
(``partition:offset:``) of the state written with them; its next write of that customer
sends only the fields whose value changed, with that head as the *base*. The script
(``stream.write_lua``) applies such a delta only if the state still has that head, i.e. if
nothing was written since that write (the head changes with every state write: another
worker after a rebalance, a deposed writer, an erasure, a link record); otherwise it writes
nothing and answers ``-2`` (stale), and the writer sends the same write again with every
field. The same head always comes with the same traits (a state is a function of the events
applied up to its offset), so a matching head means the hash holds exactly the remembered
values. A write that was fenced, or whose reply never came (the batch is retried; a crash
loses the memory), leaves the memory to a full write. Forgetting is always safe: the next
write sends every field, as before; so the memory is bounded by dropping all of it.

A delta is sent only when no remembered field is missing from the new traits (traits are
never removed, but the rule keeps even hand-edited hashes byte-identical to full writes),
and when one of the RFM inputs (``orders``, ``revenue``, ``last_purchase``) changed it
carries all of them, so the script buckets the customer from the same values as a full
write does; when none changed it skips the RFM lookup altogether.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.records import Assignment

SEP = b"\x1f"  # models.traits' separator of names and values
_RFM_INPUTS = frozenset((b"orders", b"revenue", b"last_purchase"))

STALE = -2
"""A write script's status when its delta's base is not the stored state's head."""


class WrittenTraits:
    """Per customer, the traits last written and the head of the state written with them.

    Parameters
    ----------
    limit
        Customers remembered at most (the worker's state cache size is enough: a customer
        it does not hold is written in full after its load anyway); beyond it, the memory
        starts again empty.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._last: dict[str, bytes] = {}  # customer -> b"partition:offset:" + traits

    def send(self, a: Assignment) -> tuple[bytes, bytes]:
        """The traits argument and the base (``b""``: all fields) of ``a``'s write; ``a`` is
        remembered at once, so a second write of the customer in the same pipeline is a
        delta from the first (its base is the head the first one writes)."""
        cid = a.customer_id
        if not a.traits:
            self._last.pop(cid, None)
            return b"", b""
        last = self._last.get(cid)
        self._last[cid] = b"%d:%d:%s" % (a.partition, a.offset, a.traits)
        if last is None:
            return a.traits, b""
        cut = last.index(b":", last.index(b":") + 1) + 1
        was = last[cut:]
        if was == a.traits:
            return b"", last[:cut]
        changed = delta(was, a.traits)
        return (a.traits, b"") if changed is None else (changed, last[:cut])

    def settle(self, sent: Sequence[Assignment], statuses: Sequence[Any]) -> None:
        """After the replies (the stale ones sent again in full): remember what was
        written (status 0 or more), forget what was fenced."""
        last = self._last
        if len(last) > self.limit:
            last.clear()
            return
        for a, status in zip(sent, statuses, strict=True):
            if a.traits and status >= 0:
                last[a.customer_id] = b"%d:%d:%s" % (a.partition, a.offset, a.traits)
            else:
                last.pop(a.customer_id, None)

    def forget(self) -> None:
        """Forget everything (the next write of every customer sends all its fields)."""
        self._last.clear()

    def __len__(self) -> int:
        return len(self._last)


def delta(was: bytes, now: bytes) -> bytes | None:
    """The fields of ``now`` (``models.traits.encode``'s form) whose value is not ``was``'s,
    in ``now``'s order, all RFM inputs if one changed; None when a field of ``was`` is not in
    ``now`` (then all are sent).

    >>> delta(b"orders\\x1f1\\x1fevents\\x1f5\\x1fdevice\\x1fweb",
    ...       b"orders\\x1f1\\x1fevents\\x1f6\\x1fdevice\\x1fweb\\x1fcountry\\x1fDE")
    b'events\\x1f6\\x1fcountry\\x1fDE'
    >>> delta(b"orders\\x1f1\\x1frevenue\\x1f9\\x1fevents\\x1f5",
    ...       b"orders\\x1f2\\x1frevenue\\x1f9\\x1fevents\\x1f6")
    b'orders\\x1f2\\x1frevenue\\x1f9\\x1fevents\\x1f6'
    >>> delta(b"orders\\x1f1\\x1fdevice\\x1fweb", b"orders\\x1f1") is None
    True
    """
    w, n = was.split(SEP), now.split(SEP)
    if len(w) == len(n) and w[::2] == n[::2]:  # the usual case: the same fields, in order
        changed = [i for i in range(1, len(n), 2) if w[i] != n[i]]
    else:
        old = dict(zip(w[::2], w[1::2], strict=True))
        if len(old) * 2 > len(n) or not old.keys() <= set(n[::2]):
            return None
        changed = [i for i in range(1, len(n), 2) if old.get(n[i - 1]) != n[i]]
    if any(n[i - 1] in _RFM_INPUTS for i in changed):
        moved = set(changed)
        changed = [i for i in range(1, len(n), 2) if i in moved or n[i - 1] in _RFM_INPUTS]
    out: list[bytes] = []
    for i in changed:
        out += n[i - 1:i + 1]
    return SEP.join(out)
