"""``segmenter subscribe --audiences``: a worker's real audience entries and exits, printed
once each through a consumer group, apart from the segment changes."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis.asyncio as aioredis

from stream.keys import Keys
from stream.settings import Settings
from stream.shards import change_id, streams
from tests.integration.helpers import produce, wait_for
from tests.integration.test_audiences import MOBILE, REPEAT_AT, _worker, ev
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_subscribe_limit import add_changes, change_stream, run_cli


async def test_subscribe_prints_audience_changes_durably(settings: Settings, tmp_path: Path,
                                                        r: aioredis.Redis) -> None:
    settings, worker = await _worker(settings, tmp_path,
                                     {"a-repeat-at": REPEAT_AT, "a-mobile": MOBILE})
    keys = Keys(settings.redis_prefix, cluster=settings.redis_cluster)

    async def stream() -> list[tuple[str, dict[str, object]]]:
        """Every audience change (on a cluster: of every partition's stream), by id."""
        out = []
        for name in await streams(r, keys, "audience-changes", keys.audience_changes):
            out += [(i.decode(), change_id(name, i), orjson.loads(f[b"change"]))
                    for i, f in await r.xrange(name)]
        out.sort(key=lambda e: tuple(int(x) for x in e[0].split("-")))
        return [(cid, change) for _, cid, change in out]

    try:
        await produce(settings, [
            ev("c-sub-1", 0, "page_view", country="AT", device="mobile"),
            ev("c-sub-1", 1, "purchase", amount=20.0),
            ev("c-sub-2", 0, "page_view", country="DE", device="mobile")])
        await wait_for(lambda: lag_is_zero(settings), 60, "the first events")

        async def entered(n: int) -> bool:
            return len(await stream()) >= n
        await wait_for(lambda: entered(2), 30, "two entries into a-mobile")
        first = await run_cli(settings, "--audiences", "--group", "crm", "--from-start",
                              "--limit", "2")
        assert sorted((m["customer_id"], m["audience"], m["change"]) for m in first) == [
            ("c-sub-1", "a-mobile", "entered"), ("c-sub-2", "a-mobile", "entered")]
        assert all(m["reason"] == "event" and m["event_id"] for m in first)
        # the next changes: c-sub-1 buys again on desktop, enters a-repeat-at, exits a-mobile
        await produce(settings, [ev("c-sub-1", 2, "purchase", day=1, amount=30.0,
                                    device="desktop")])
        await wait_for(lambda: lag_is_zero(settings), 60, "the second purchase")
        await wait_for(lambda: entered(4), 30, "the second pair of changes")
        second = await run_cli(settings, "--audiences", "--group", "crm", "--limit", "2")
        assert sorted((m["audience"], m["change"]) for m in second) == [
            ("a-mobile", "exited"), ("a-repeat-at", "entered")]
        assert {m["customer_id"] for m in second} == {"c-sub-1"}
        # exactly the stream's entries, in order, each once (on a cluster: in the order of
        # each partition's stream); nothing left pending
        entries = await stream()
        printed = [m["id"] for m in first + second]
        if keys.cluster:
            assert sorted(printed) == sorted(i for i, _ in entries)
        else:
            assert printed == [i for i, _ in entries]
        for name in await streams(r, keys, "audience-changes", keys.audience_changes):
            assert (await r.xpending(name, "crm"))["pending"] == 0
        # the segment changes are another stream (no model yet here: one written by hand)
        ids = await add_changes(r, await change_stream(r, settings), 1)
        segs = await run_cli(settings, "--group", "crm", "--from-start", "--limit", "1")
        assert [m["id"] for m in segs] == ids and "audience" not in segs[0]
    finally:
        assert worker.stop() == 0, worker.log()
