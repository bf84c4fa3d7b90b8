"""Crashes and shutdowns mid-stream, for real: ``kill -9`` of a worker (alone, and one of two
in a group) and SIGTERM, while known events are still arriving. The final Redis state
(features, segments, sizes, change messages) must equal an uninterrupted run's.

Every run reads the same topic with its own consumer group and Redis prefix, from the same
pre-installed model snapshot. The model does not learn in these runs (a huge update
interval) and nothing is re-scored in the background: those follow the clock, so they would
make two correct runs differ; here only delivery is under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from models.core import Record, Segmenter
from models.simulator import ShopSimulator
from stream.embedded import free_port, start_kafka, start_redis
from stream.kafka_io import ensure_topics, read_lag_once
from stream.redis_io import connect
from stream.settings import Settings
from tests.conftest import broker_kind, make_settings
from tests.integration.apache_kafka import KafkaCluster
from tests.integration.helpers import WorkerProcess, produce, running, wait_for
from tests.integration.layout import counts, entries, layout

CHUNKS = 12


@dataclasses.dataclass
class Stream:
    """The shared input: a topic of known events, and the model every run starts from."""

    settings: Settings
    chunks: list[list[tuple[bytes, bytes]]]
    checkpoint: dict[str, Any]
    ids: list[str]
    reference: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(c) for c in self.chunks)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stream(servers: tuple[str, str]) -> AsyncIterator[Stream]:
    yield make_stream(make_settings(servers))


def make_stream(settings: Settings) -> Stream:
    """The known events and the model learned from their first third."""
    sim = ShopSimulator(customers=700, seed=8, days=10)
    events = list(sim.history())
    messages = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
    # the model: learned in-process from the first third of the events
    seg = Segmenter(dataclasses.replace(settings.segmenter_config(), trains=True))
    first = [Record("events", 0, i, k, v) for i, (k, v) in enumerate(messages[:len(events) // 3])]
    seg.apply(seg.parse(first), {})
    assert seg.model.ready
    size = -(-len(messages) // CHUNKS)
    return Stream(settings, [messages[i:i + size] for i in range(0, len(messages), size)],
                 seg.model.checkpoint(), sorted(sim.truth))


async def run_settings(s: Stream, name: str) -> Settings:
    """A run of its own: topics (the same events are produced into each, so the same keys
    land on the same partitions at the same offsets), group, prefix, web port; no learning,
    no re-scoring."""
    base = s.settings
    settings = dataclasses.replace(
        base, events_topic=f"{base.events_topic}-{name}", dlq_topic=f"{base.dlq_topic}-{name}",
        group=f"{base.group}-{name}", redis_prefix=f"{base.redis_prefix}{name}:",
        changes_topic=f"{base.changes_topic}-{name}",
        lifecycle_topic=f"{base.lifecycle_topic}-{name}", web_port=free_port(),
        model_update_every=10**9, model_update_days=0.0, rescore_per_s=0)
    await ensure_topics(settings)
    return settings


async def install_model(r: aioredis.Redis, settings: Settings, checkpoint: dict) -> None:
    keys = layout(r, settings.redis_prefix)
    await r.set(keys.model, orjson.dumps(checkpoint))
    await r.set(keys.model_version, checkpoint["version"])


async def committed(settings: Settings) -> dict[int, int]:
    rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
    return {p.partition: p.committed or 0 for p in rows}


async def caught_up(settings: Settings, total: int) -> bool:
    return sum((await committed(settings)).values()) == total


async def final_state(r: aioredis.Redis, settings: Settings, ids: list[str]) -> dict[str, Any]:
    """Everything a run leaves in Redis that must not depend on crashes (write times apart)."""
    prefix = settings.redis_prefix
    async with r.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.get(f"{prefix}state:{{{cid}}}")
            pipe.hgetall(f"{prefix}customer:{{{cid}}}")
        raw = await pipe.execute()
    customers = {}
    for i, cid in enumerate(ids):
        hash_ = {k.decode(): v.decode() for k, v in raw[2 * i + 1].items()}
        hash_.pop("updated_at", None)  # a wall-clock time
        hash_.pop("explanation", None)  # from the features when last assigned
        customers[cid] = (raw[2 * i], hash_)
    sizes = {k: v for k, v in (await counts(r, prefix, "sizes")).items() if v}
    chains: dict[str, list[tuple[str | None, str, str]]] = {}
    for _, fields in await entries(r, prefix, "changes"):
        c = orjson.loads(fields[b"change"])
        chains.setdefault(c["customer_id"], []).append((c["from"], c["to"], c["event_id"]))
    return {"customers": customers, "sizes": sizes, "changes": chains}


async def reference(s: Stream, r: aioredis.Redis, tmp_path: Path) -> dict[str, Any]:
    """The uninterrupted run (once per module), after every event was produced."""
    if not s.reference:
        settings = await run_settings(s, "ref")
        for chunk in s.chunks:
            await produce(settings, chunk)
        await install_model(r, settings, s.checkpoint)
        worker = WorkerProcess(settings, tmp_path, "reference")
        try:
            await wait_for(lambda: caught_up(settings, s.total), 120, "the reference run")
        finally:
            assert worker.stop() == 0, worker.log()
        s.reference = await final_state(r, settings, s.ids)
    return s.reference


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    differ = [c for c in want["customers"] if got["customers"][c] != want["customers"][c]]
    if differ:
        c = differ[0]
        (gs, gh), (ws, wh) = got["customers"][c], want["customers"][c]
        detail = {k: (gh.get(k), wh.get(k)) for k in {*gh, *wh} if gh.get(k) != wh.get(k)}
        raise AssertionError(f"{len(differ)} customers differ; {c}: hash (got, want) {detail}, "
                             f"state got {gs!r}\nwant {ws!r}")
    assert got["sizes"] == want["sizes"]
    assert sum(want["sizes"].values()) == len(want["customers"])
    for run in (got, want):
        for cid, (_, hash_) in run["customers"].items():
            assert_complete_chain(cid, run["changes"].get(cid, []), hash_["segment"])


def assert_complete_chain(cid: str, chain: list[tuple[str | None, str, str]],
                          final: str) -> None:
    """No change message lost or repeated: each starts where the previous ended, from the
    first assignment to the segment in the hash, and no event caused two.

    Which intermediate segments a customer passed through depends on how events were
    batched (a batch assigns each customer once, with all its events applied), so two
    correct runs may differ there; their final states may not.
    """
    assert chain and chain[0][0] is None, f"{cid}: first assignment missing: {chain}"
    for (_, to, _), (frm, _, _) in zip(chain, chain[1:], strict=False):
        assert frm == to, f"{cid}: a change message is missing between {to} and {frm}"
    assert chain[-1][1] == final, f"{cid}: the last change is not the current segment"
    events = [e for _, _, e in chain]
    assert len(events) == len(set(events)), f"{cid}: a change message was repeated"


async def produce_slowly(s: Stream, to: Settings) -> None:
    """The events arrive over a few seconds, in chunks, as live traffic does."""
    for chunk in s.chunks:
        await produce(to, chunk)
        await asyncio.sleep(0.4)


async def start_run(s: Stream, r: aioredis.Redis, tmp_path: Path, name: str, label: str,
                    feed: Callable[[Stream, Settings], Coroutine[Any, Any, None]] = produce_slowly,
                    ) -> tuple[Settings, WorkerProcess, asyncio.Task[None]]:
    """A fault run: its own settings, the reference model installed, one healthy worker
    (``label``), and the stream being produced by ``feed`` (the returned task)."""
    settings = await run_settings(s, name)
    await install_model(r, settings, s.checkpoint)
    worker = WorkerProcess(settings, tmp_path, label)
    await worker.wait_healthy()
    return settings, worker, asyncio.create_task(feed(s, settings))


async def midway(settings: Settings, s: Stream, producing: asyncio.Task[None]) -> None:
    """Wait until the run has committed some of the stream while more is still coming."""
    async def some() -> bool:
        return sum((await committed(settings)).values()) >= s.total // 5
    await wait_for(some, 60, "the run to commit part of the stream")
    assert not producing.done(), "the stream ended before the fault; slow it down"


@pytest.fixture
async def r(stream: Stream) -> AsyncIterator[aioredis.Redis]:
    client = connect(stream.settings.redis_url, cluster=stream.settings.redis_cluster)
    yield client
    await client.aclose()


async def test_kill_9_mid_stream_then_restart_equals_an_uninterrupted_run(
        stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    settings, worker, producing = await start_run(stream, r, tmp_path, "kill", "killed")
    try:
        await midway(settings, stream, producing)
        helpers = worker.children()
        assert helpers  # the validation helper (and multiprocessing's resource tracker)
        worker.proc.send_signal(signal.SIGKILL)
        assert worker.proc.wait(10) == -signal.SIGKILL
        # the helpers do not outlive a worker killed outright
        async def helpers_gone() -> bool:
            return not any(running(p) for p in helpers)

        await wait_for(helpers_gone, 10, "the killed worker's helpers to exit")
        worker = WorkerProcess(settings, tmp_path, "restarted")
        await producing
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the restarted worker")
    finally:
        producing.cancel()
        assert worker.stop() == 0, worker.log()
    got = await final_state(r, settings, stream.ids)
    assert_same(got, await reference(stream, r, tmp_path))


async def test_one_of_two_workers_killed_the_survivor_takes_over_exactly(
        stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    settings = await run_settings(stream, "pair")
    await install_model(r, settings, stream.checkpoint)
    workers = [WorkerProcess(settings, tmp_path, "a"),
               WorkerProcess(dataclasses.replace(settings, web_port=free_port()), tmp_path, "b")]
    for w in workers:
        await w.wait_healthy()

    async def shared() -> bool:
        return all(w.metrics_text().count("segmenter_assigned_partitions 2.0") for w in workers)
    await wait_for(shared, 60, "both workers to own two partitions")
    producing = asyncio.create_task(produce_slowly(stream, settings))
    # the learner dies: its partitions and the learner role both move to the survivor
    learner = ["segmenter_model_learner 1.0" in w.metrics_text() for w in workers]
    assert sorted(learner) == [False, True]
    victim, survivor = (workers if learner[0] else workers[::-1])
    try:
        await midway(settings, stream, producing)
        victim.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait(10)

        async def took_over() -> bool:
            return "segmenter_assigned_partitions 4.0" in survivor.metrics_text()
        await wait_for(took_over, 60, "the survivor to own every partition")
        takeover = time.monotonic() - killed_at
        print(f"takeover after kill -9: {takeover:.1f} s "
              f"(session timeout {settings.session_timeout_s:.0f} s)")
        # the group notices within the session timeout; then one rebalance (and the 2 s
        # metrics timer that shows it)
        assert takeover <= settings.session_timeout_s + 10
        await producing
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the survivor")
    finally:
        producing.cancel()
        assert survivor.stop() == 0, survivor.log()
    got = await final_state(r, settings, stream.ids)
    assert_same(got, await reference(stream, r, tmp_path))


async def test_sigterm_commits_what_was_processed_and_leaves_no_half_written_customer(
        stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    settings, worker, producing = await start_run(stream, r, tmp_path, "term", "terminated")
    try:
        await midway(settings, stream, producing)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0, worker.log()
        # Redis holds exactly what was committed: in every partition the last committed
        # event is the newest state stored for that partition, nothing after it
        offsets = await committed(settings)
        state = await final_state(r, settings, stream.ids)
        newest: dict[int, int] = {}
        for raw, _ in state["customers"].values():
            if raw:  # "partition:offset:" + the state blob
                p, o = map(int, raw.split(b":", 2)[:2])
                newest[p] = max(newest.get(p, -1), o)
        assert {p: o for p, o in offsets.items() if o} == {p: o + 1 for p, o in newest.items()}
        assert 0 < sum(offsets.values()) < stream.total
        # every stored customer is whole: a state and a segment, counted once in the sizes
        stored = [h for f, h in state["customers"].values() if f or h]
        assert all(f and h.get("segment") for f, h in state["customers"].values() if f or h)
        assert sum(state["sizes"].values()) == len(stored)
        worker = WorkerProcess(settings, tmp_path, "after-sigterm")
        await producing
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the restarted worker")
    finally:
        producing.cancel()
        assert worker.stop() == 0, worker.log()
    assert_same(await final_state(r, settings, stream.ids), await reference(stream, r, tmp_path))



@dataclasses.dataclass
class OwnBroker:
    """A broker of the test's own, of the kind under test."""

    url: str
    proc: subprocess.Popen[bytes]
    stop: Callable[[], object]


async def own_broker() -> OwnBroker:
    """The embedded broker, or with ``SEGMENTER_TEST_BROKER=apache`` one Apache Kafka node."""
    if broker_kind() == "apache":
        cluster = KafkaCluster(1)
        await cluster.start_async()
        assert cluster.nodes[0].proc is not None
        return OwnBroker(cluster.bootstrap, cluster.nodes[0].proc, cluster.stop)
    embedded = start_kafka()
    return OwnBroker(embedded.url, embedded.proc, embedded.stop)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_redis_down_15_s_mid_stream_backs_off_reports_it_and_loses_nothing(
        stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    own = start_redis(persist_dir=str(data))  # this test's Redis, stopped and started again
    # (one Redis of its own, whichever the suite runs on: its outage is that one's)
    settings = dataclasses.replace(await run_settings(stream, "redis"), redis_url=own.url,
                                   redis_cluster=False)
    client = aioredis.from_url(own.url)
    await install_model(client, settings, stream.checkpoint)
    worker = WorkerProcess(settings, tmp_path, "redis-outage")
    await worker.wait_healthy()
    producing = asyncio.create_task(produce_slowly(stream, settings))
    try:
        await midway(settings, stream, producing)
        own.stop()
        down_at, cpu0, rss0 = time.monotonic(), cpu_seconds(worker.proc.pid), rss_mb(
            worker.proc.pid)

        async def reported() -> bool:
            status, body = worker.health()
            return status == 503 and any("Redis" in reason for reason in body["reasons"])
        await wait_for(reported, 15, "/health to report Redis down")
        await asyncio.sleep(max(0.0, 15 - (time.monotonic() - down_at)))
        cpu = (cpu_seconds(worker.proc.pid) - cpu0) / (time.monotonic() - down_at)
        grown = rss_mb(worker.proc.pid) - rss0
        assert worker.proc.poll() is None, worker.log()
        own = start_redis(own.port, persist_dir=str(data))
        await client.aclose()  # its connection died with the server
        client = aioredis.from_url(own.url)
        await producing
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the worker to resume")
        status, _ = worker.health()
        assert status == 200
    finally:
        producing.cancel()
        try:
            assert worker.stop() == 0, worker.log()
            got = await final_state(client, settings, stream.ids)
        finally:
            await client.aclose()
            own.stop()
    print(f"Redis outage: worker CPU {cpu:.0%} of a core while waiting, RSS {grown:+.1f} MB")
    assert cpu < 0.25, "busy loop while Redis is down"  # back-off, not a spin
    assert grown < 64, "memory grew while Redis was down"  # it stops fetching; it does not buffer
    assert_same(got, await reference(stream, r, tmp_path))


async def test_broker_unreachable_15_s_the_worker_waits_reports_and_resumes(
        stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    # The embedded broker keeps data in memory only, so it is frozen (SIGSTOP), not
    # restarted: to clients it is a broker that stopped answering, as in a network partition.
    # (On Apache Kafka: a node of its own, frozen the same way; tests/integration/
    # test_broker_faults.py kills and restarts brokers of a three-node cluster.)
    broker = await own_broker()
    settings = dataclasses.replace(await run_settings(stream, "broker"), kafka=broker.url)
    worker: WorkerProcess | None = None
    try:
        await ensure_topics(settings)
        await install_model(r, settings, stream.checkpoint)
        half = len(stream.chunks) // 2
        for chunk in stream.chunks[:half]:  # same keys, same order: same partitions, offsets
            await produce(settings, chunk)
        worker = WorkerProcess(settings, tmp_path, "broker-outage")
        await worker.wait_healthy()
        first = sum(len(c) for c in stream.chunks[:half])
        await wait_for(lambda: caught_up(settings, first), 60, "the first half")
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            async def reported() -> bool:
                status, body = worker.health()
                return status == 503 and any("Kafka" in x for x in body["reasons"])
            await wait_for(reported, 15, "/health to report the broker unreachable")
            await asyncio.sleep(10)
            assert worker.proc.poll() is None, worker.log()
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        for chunk in stream.chunks[half:]:
            await produce(settings, chunk)
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the worker to resume")

        async def healthy() -> bool:
            return worker.health()[0] == 200
        await wait_for(healthy, 30, "/health to recover")
        assert worker.stop() == 0, worker.log()
        assert_same(await final_state(r, settings, stream.ids),
                    await reference(stream, r, tmp_path))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
