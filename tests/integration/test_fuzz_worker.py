"""Property-based fuzzing through a real worker, real broker and real Redis: a drawn corpus
of valid and broken messages (see ``tests/fuzz.py``). Every bad message reaches the DLQ with
its original bytes and a reason, every good one is processed, the worker stays healthy."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import orjson
from hypothesis import HealthCheck, Phase, given, settings

from models.events import KNOWN_TYPES
from stream.kafka_io import ensure_topics
from stream.redis_io import connect
from stream.settings import Settings
from tests.fuzz import messages
from tests.integration.helpers import WorkerProcess, consume_all, produce, wait_for
from tests.integration.test_pipeline import lag_is_zero

CORPUS = 400


def draw_corpus(n: int) -> list[tuple[str, bytes, bytes]]:
    """``n`` messages drawn by Hypothesis (one per example: a corpus is too big for one)."""
    corpus: list[tuple[str, bytes, bytes]] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(messages())
    def collect(message: tuple[str, bytes, bytes]) -> None:
        corpus.append(message)

    collect()
    return corpus


async def test_fuzzed_corpus_through_a_real_worker(settings: Settings, tmp_path: Path) -> None:
    corpus = draw_corpus(CORPUS)
    assert len(corpus) >= CORPUS * 0.9
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()
        await produce(settings, [(key, value) for _, key, value in corpus])
        await wait_for(lambda: lag_is_zero(settings), 60, "the worker to consume the corpus")
        bad = [value for label, _, value in corpus if label != "valid"]
        good = [value for label, _, value in corpus if label == "valid"]
        kinds = Counter(label for label, _, _ in corpus)
        print(f"\nfuzz (real worker): {len(corpus)} messages, {len(good)} valid, "
              f"{len(bad)} broken in {len(kinds) - 1} ways")
        text = worker.metrics_text()
        late = int(sum(float(n) for n in re.findall(
            r'^segmenter_events_total\{outcome="late",type="[^"]*"\} (\S+)$', text, re.M)))
        dlq = await consume_all(settings, settings.dlq_topic, len(bad) + late, 30)
        reasons = [dict(m.headers).get("segmenter.error.reason") for m in dlq]
        assert all(reasons)
        # the broken ones, original bytes, each once; and valid events behind their
        # customer's allowed lateness (the corpus draws any time from 1970 on)
        assert Counter(m.value for m, why in zip(dlq, reasons, strict=True)
                       if why != b"late") == Counter(bad)
        assert Counter(m.value for m, why in zip(dlq, reasons, strict=True)
                       if why == b"late") <= Counter(good)
        counted = Counter()
        for outcome, n in re.findall(r'^segmenter_events_total\{outcome="(\w+)",type="[^"]*"\} '
                                     r"(\S+)$", text, re.M):
            counted[outcome] += int(float(n))
        assert counted["dead_lettered"] == len(bad)
        # valid: processed, a duplicate (a drawn event id repeated), late, or an unknown type
        assert counted["processed"] + counted["duplicate"] + counted["ignored"] + \
            counted["late"] == len(good)
        assert worker.health()[0] == 200 and worker.proc.poll() is None
        r = connect(settings.redis_url, cluster=settings.redis_cluster)
        try:  # every valid event's customer has a state; keys hold the raw id in a hash tag
            ids = sorted({e["customer_id"] for e in map(orjson.loads, good)
                          if e["type"] in KNOWN_TYPES})
            async with r.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.exists(f"{settings.redis_prefix}state:{{{cid}}}")
                missing = [c for c, n in zip(ids, await pipe.execute(), strict=True) if not n]
            assert not missing, missing[:5]
        finally:
            await r.aclose()
    finally:
        assert worker.stop() == 0, worker.log()
