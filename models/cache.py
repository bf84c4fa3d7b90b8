"""The customers a worker holds in memory: an LRU cache of :class:`CustomerState` with the
bookkeeping of what must still be written.

Every customer whose partition this worker owns and who sent an event recently is here; the
rest is in Redis (the caller reads missing states before a batch, :meth:`CustomerCache.load`).
Beyond the states the cache tracks three sets, each an answer to "what is left to do":

- :attr:`~CustomerCache.dirty`: changed since the last drain, written once per commit interval;
- :attr:`~CustomerCache.pending`: changed before any model existed, assigned by the first one;
- the event-time :attr:`~CustomerCache.watermark`: the latest event time seen, "now" for
  time-based features.

Examples
--------
>>> cache = CustomerCache(size=2)
>>> cache.load({c: CustomerState(c) for c in "abc"})  # least recently active first
>>> cache.dirty.update(dict.fromkeys("abc"))
>>> [s.customer_id for s in cache.drain()], list(cache.states)  # least recent evicted
(['a', 'b', 'c'], ['b', 'c'])
"""

from __future__ import annotations

from collections import OrderedDict

from models.state import CustomerState

__all__ = ["CustomerCache"]


class CustomerCache:
    """Customer states by id, least recently active first.

    Parameters
    ----------
    size
        Most states kept after a drain (the rest is in Redis).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.states: OrderedDict[str, CustomerState] = OrderedDict()
        self.dirty: dict[str, None] = {}  # an ordered set: changed since the last drain
        self.pending: set[str] = set()  # changed before the model was ready
        # explained again at the drain: in a renamed segment, or bought since (a stored
        # explanation of their segment would still say "no purchase yet" or "lapsing")
        self.renamed: set[str] = set()
        self.watermark = 0  # the latest event time seen: "now" for time-based features

    def __len__(self) -> int:
        return len(self.states)

    def __contains__(self, customer_id: object) -> bool:
        return customer_id in self.states

    def load(self, loaded: dict[str, CustomerState]) -> None:
        """States read from Redis for customers that were not cached."""
        for cid, known in loaded.items():
            self.states.setdefault(cid, known)
            self.watermark = max(self.watermark, known.last_ts)

    def warm(self, states: list[CustomerState]) -> list[str]:
        """Cache states read from Redis for newly assigned partitions (a start, a restart, a
        failover), so that re-scoring and the learning sample cover customers who send no new
        event. A cached state is newer and wins; the bound is kept (warmed states are the
        first evicted). Returns the ids added."""
        added = []
        for st in states:
            if len(self.states) >= self.size:
                break
            if st.customer_id not in self.states:
                self.states[st.customer_id] = st
                self.states.move_to_end(st.customer_id, last=False)
                self.watermark = max(self.watermark, st.last_ts)
                added.append(st.customer_id)
        return added

    def forget(self, customer_id: str) -> None:
        """Drop one customer (erased, or owned by another worker from now on)."""
        self.states.pop(customer_id, None)
        self.dirty.pop(customer_id, None)
        self.pending.discard(customer_id)
        self.renamed.discard(customer_id)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the states of revoked partitions (another worker may change them)."""
        for cid in [c for c, s in self.states.items() if s.partition in partitions]:
            self.forget(cid)

    def mark_renamed(self, segments: set[str]) -> None:
        """Customers of these (renamed) segments get a full write at the next drain, with
        the new name and an explanation that matches it."""
        if segments:
            ids = [c for c, s in self.states.items() if s.segment in segments]
            self.dirty.update(dict.fromkeys(ids))
            self.renamed.update(ids)

    def drain(self) -> list[CustomerState]:
        """The customers changed since the last drain; then shrink the cache to its bound
        (the evicted are in Redis once the caller has written what this returns)."""
        states = self.states
        out = [states[cid] for cid in self.dirty]
        self.dirty.clear()
        excess = len(self.states) - self.size
        for _ in range(max(0, excess)):
            cid, _ = self.states.popitem(last=False)
            self.pending.discard(cid)
            self.renamed.discard(cid)
        return out

    def drain_explained(self) -> tuple[list[CustomerState], set[str]]:
        """:meth:`drain`, and those of its customers to explain again (in a renamed segment,
        or bought since)."""
        states = self.drain()
        again = {st.customer_id for st in states if st.customer_id in self.renamed}
        self.renamed.clear()
        return states, again
