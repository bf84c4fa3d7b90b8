"""RedisStore against real Redis: writes read back, and the warm-start scan's partition filter."""

from __future__ import annotations

from models.core import Assignment
from models.state import CustomerState
from stream.redis_io import RedisStore, connect
from stream.settings import Settings


def assignment(cid: str, partition: int, segment: str) -> Assignment:
    st = CustomerState(cid)
    st.partition, st.offset, st.last_ts = partition, 7, 1767225600000
    return Assignment(customer_id=cid, segment=segment, segment_name=f"name {segment}",
                      confidence=0.5, model_version=3, event_id=f"e-{cid}",
                      event_ts=st.last_ts, reason="event", explanation="", partition=partition,
                      offset=7, state=st.to_bytes())


async def test_scan_returns_only_the_asked_partitions_with_their_segments(
        settings: Settings) -> None:
    client = connect(settings.redis_url)
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    try:
        writes = [assignment(f"c{i}/{{x}}", i % 4, f"s{i % 3}") for i in range(40)]
        await store.write(writes, 1767225600000)
        cursor, found = 0, []
        while True:
            cursor, states = await store.scan_states(cursor, {1, 3}, count=7)
            found.extend(states)
            if cursor == 0:
                break
        assert sorted(s.customer_id for s in found) == sorted(
            a.customer_id for a in writes if a.partition in (1, 3))
        by_id = {a.customer_id: a for a in writes}
        for s in found:
            assert (s.segment, s.model_version, s.confidence, s.partition) == (
                by_id[s.customer_id].segment, 3, 0.5, by_id[s.customer_id].partition)
        loaded = await store.load_states({"c0/{x}", "c1/{x}", "unknown"})
        assert sorted(loaded) == ["c0/{x}", "c1/{x}"] and loaded["c0/{x}"].segment == "s0"
    finally:
        await client.aclose()
