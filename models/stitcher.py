"""Identity stitching inside a worker's batches: the steps of :mod:`models.stitching` run on
the core's cached states, with what they produce collected in the
:class:`~models.config.BatchResult` for the stream layer to write and produce before it
commits (the README's "Identity stitching", steps 1-4).

:class:`Stitcher` holds the link records of the anonymous ids this worker owns (read from
Redis, where they replace the ids' states), and is called by :meth:`Segmenter.consume`:

- :meth:`Stitcher.event` for every event with an ``anonymous_id``: a link to produce (an
  ``identify``/``alias`` with both ids), or the event forwarded to its customer (only a
  linked anonymous id);
- :meth:`Stitcher.control` for a ``link`` (freeze the snapshot, write the link record in
  place of the state, produce the merge) or a ``merge`` (fold the snapshot into the
  customer once; the customer is then assigned with reason ``merge``) or an ``unlink``
  (an id dropped past its customer's bound forgets its link).
"""

from __future__ import annotations

from models.cache import CustomerCache
from models.config import BatchResult
from models.events import Event
from models.identity import LINK, MERGE, Link, Merge, Unlink, encode_link, encode_merge
from models.records import RecordLike
from models.state import CustomerState
from models.stitching import LinkRecord, encode_record, forward, on_event, on_link, on_merge

MERGE_TYPE = "merge"
"""Type of the event a merged customer is assigned by (its reason: ``merge``)."""


class Stitcher:
    """The link records this worker knows, and the steps on them.

    Parameters
    ----------
    cache
        The core's customer states.
    """

    def __init__(self, cache: CustomerCache) -> None:
        self.cache = cache
        self.links: dict[str, LinkRecord] = {}
        """Link records of linked anonymous ids, by id."""
        self.partitions: dict[str, int] = {}
        """The partition each link record was written from (dropped with it)."""

    def load(self, records: dict[str, tuple[int, LinkRecord]]) -> None:
        """Link records read from Redis (by id: the partition they were written from)."""
        for anon, (partition, record) in records.items():
            self.links.setdefault(anon, record)
            self.partitions.setdefault(anon, partition)

    def forget(self, anonymous_id: str) -> None:
        """Drop a link record (the id was erased)."""
        self.links.pop(anonymous_id, None)
        self.partitions.pop(anonymous_id, None)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the link records of revoked partitions."""
        for anon in [a for a, p in self.partitions.items() if p in partitions]:
            self.forget(anon)

    def event(self, rec: RecordLike, ev: Event, res: BatchResult) -> bool:
        """Step 1 or 4 for an event with an anonymous id; True when it was forwarded to
        its customer (not applied here)."""
        anon = ev.anonymous_id
        if anon == ev.customer_id:  # only the anonymous id
            out = forward(rec.value or b"", self.links.get(ev.customer_id))
            if out is None:
                return False
            res.produce.append((*out, None))
            res.counts[ev.type, "forwarded"] += 1
            return True
        link = on_event(ev)
        if link is not None:  # applied or not (a redelivery): links are idempotent
            res.produce.append((link.anonymous_id.encode(), encode_link(link), LINK))
        return False

    def target(self, msg: Link | Merge | Unlink) -> str:
        """Whose state a control message needs loaded."""
        return msg.link.customer_id if isinstance(msg, Merge) else msg.anonymous_id

    def control(self, rec: RecordLike, msg: Link | Merge | Unlink, res: BatchResult,
                changed: dict[str, Event], half_life_ms: float, lateness_ms: int,
                max_ids: int) -> None:
        """Step 2 (a link, on the anonymous id's worker) or 3 (a merge, on the
        customer's), or step 6's unlink; ``changed``: the core's customers changed but not
        assigned yet."""
        if isinstance(msg, Link):
            self._link(rec, msg, res, changed)
        elif isinstance(msg, Unlink):
            record = self.links.get(msg.anonymous_id)
            if record is not None and record.customer_id == msg.customer_id:
                self.forget(msg.anonymous_id)  # later events: a profile of its own
                res.unlinked.append((msg.anonymous_id, msg.customer_id))
            res.counts["unlink", "processed"] += 1
        else:
            self._merge(rec, msg, res, changed, half_life_ms, lateness_ms, max_ids)

    def _link(self, rec: RecordLike, link: Link, res: BatchResult,
              changed: dict[str, Event]) -> None:
        anon = link.anonymous_id
        before = self.links.get(anon)
        record, merge = on_link(link, self.cache.states.get(anon), before)
        if record is not None and record != before:
            self.links[anon], self.partitions[anon] = record, rec.partition
            res.linked.append((anon, rec.partition, rec.offset, encode_record(record)))
        # the anonymous profile is the record now: nothing of it is written as a state
        self.cache.forget(anon)
        changed.pop(anon, None)
        if any(a.customer_id == anon for a in res.assignments):
            res.assignments = [a for a in res.assignments if a.customer_id != anon]
        if merge is not None:
            res.produce.append((link.customer_id.encode(), encode_merge(merge), MERGE))
        res.counts["link", "processed"] += 1

    def _merge(self, rec: RecordLike, msg: Merge, res: BatchResult,
               changed: dict[str, Event], half_life_ms: float, lateness_ms: int,
               max_ids: int) -> None:
        link = msg.link
        cid, states = link.customer_id, self.cache.states
        st = states.get(cid)
        if st is None:
            st = states[cid] = CustomerState(cid)
        if st.partition == rec.partition and rec.offset <= st.offset:
            outcome = "duplicate"
        else:
            outcome, _ = on_merge(st, msg, {}, half_life_ms, lateness_ms, max_ids)
        res.counts[MERGE_TYPE, "processed" if outcome == "new" else outcome] += 1
        if outcome == "late":
            return
        if outcome == "new":
            st.partition, st.offset = rec.partition, rec.offset
            changed[cid] = Event(link.event_id, cid, MERGE_TYPE, link.ts_ms, 0)
            self.cache.watermark = max(self.cache.watermark, st.last_ts)
        # also for a duplicate: the mirror and its change message are idempotent, and a
        # crash may have come between the customer's write and them
        res.merged.append((link.anonymous_id, cid, link.event_id, link.ts_ms))
