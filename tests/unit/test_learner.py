"""Model updates in the helper process (stream.learner) against inline updates: a real spawned
helper, no servers."""

from __future__ import annotations

from typing import Any

from models.core import Segmenter, SegmenterConfig
from stream.learner import Learner
from tests.unit.test_core import records


async def test_updates_in_the_helper_give_what_inline_updates_give() -> None:
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=3, learner=True)
    inline, deferred = Segmenter(cfg), Segmenter(cfg)
    learner = Learner()
    await learner.start()
    assert learner.running
    follows = 0
    submit_follow = learner.submit_follow

    def counted(job: Any) -> Any:
        nonlocal follows
        out = submit_follow(job)
        follows += out is not None
        return out

    learner.submit_follow = counted  # type: ignore[method-assign]
    got: dict[str, tuple[str, bytes]] = {}
    want: dict[str, tuple[str, bytes]] = {}
    lifecycle: tuple[list[Any], list[Any]] = ([], [])
    try:
        for n, i in enumerate(range(0, len(recs), 2500)):
            res, _ = await learner.apply(deferred, deferred.parse(recs[i:i + 2500]), {}, 0)
            got.update((a.customer_id, (a.segment, a.state)) for a in res.assignments)
            ref = inline.apply(inline.parse(recs[i:i + 2500]), {}, now_ms=0)
            want.update((a.customer_id, (a.segment, a.state)) for a in ref.assignments)
            lifecycle[0].extend(res.lifecycle)
            lifecycle[1].extend(ref.lifecycle)
            if n % 2 == 1 or i + 2500 >= len(recs):  # a commit: settle, write every state
                res, _ = await learner.apply(deferred, [], {}, 0, settle=True)
                assert deferred.job is None
                got.update((a.customer_id, (a.segment, a.state)) for a in res.assignments)
                lifecycle[0].extend(res.lifecycle)
                got.update((a.customer_id, (a.segment, a.state)) for a in deferred.drain())
                want.update((a.customer_id, (a.segment, a.state)) for a in inline.drain())
    finally:
        learner.close()
    assert follows >= 3  # refreshes did start in the helper on the update before them
    assert got == want
    assert lifecycle[0] == lifecycle[1] and lifecycle[0]
    assert deferred.model.version == inline.model.version > 10
    assert deferred.model.checkpoint() == inline.model.checkpoint()
