"""The batch reader's modes (stream.consume): large batches read ahead while behind, small
ones without read-ahead once caught up; a stand-in consumer serves a fixed log (no network)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.consume import BatchReader
from stream.metrics import Metrics
from stream.parsing import Validator

TP = TopicPartition("events", 0)


class Log:
    """A partition with ``end`` records, of which getmany hands out the next ones."""

    def __init__(self, end: int) -> None:
        self.end, self.pos = end, 0
        self.asked: list[int] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int:
        return self.end

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        self.asked.append(max_records)
        n = min(max_records, self.end - self.pos)
        out = [ConsumerRecord("events", 0, o, 0, 0, b"c", orjson.dumps(
            {"event_id": f"e{o}", "customer_id": "c", "type": "page_view",
             "timestamp": 1767225600000 + o}), None, 1, 1, []) for o in range(self.pos,
                                                                            self.pos + n)]
        self.pos += n
        return {TP: out} if out else {}


async def test_behind_large_batches_read_ahead_then_live_small_ones() -> None:
    log = Log(2500)
    consumer: Any = log
    reader = BatchReader(consumer, Validator(enabled=False), Metrics(), batch_max=1000,
                         ahead=2, live_max=100)
    batch, parsed = await reader.next()
    assert len(parsed) == 1000 and reader.behind
    assert log.asked == [1000, 1000]  # one batch read ahead
    await reader.next()
    batch, parsed = await reader.next()
    assert len(parsed) == 500 and not reader.behind  # short fetch, nothing left: caught up
    batch, parsed = await reader.next()  # read ahead while still behind: nothing more
    assert not parsed and not reader.behind
    log.end += 30  # new events while the worker is live: the next fetch, nothing ahead
    asked = len(log.asked)
    batch, parsed = await reader.next()
    assert len(parsed) == 30 and not reader.behind
    assert log.asked[asked:] == [100]  # a live batch, and no read-ahead
    log.end += 5000  # a burst: a full live batch, the watermark shows more, behind again
    batch, parsed = await reader.next()
    assert len(parsed) == 100 and reader.behind and reader.backlog() == 4900
    batch, parsed = await reader.next()
    assert len(parsed) == 1000 and log.asked[-2:] == [1000, 1000]
    await reader.close()
