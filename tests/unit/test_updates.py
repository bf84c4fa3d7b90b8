"""Model updates in the helper process (stream.updates) against inline updates: a real spawned
helper, no servers."""

from __future__ import annotations

from typing import Any

from models.core import Segmenter, SegmenterConfig
from stream.updates import ModelUpdates
from tests.unit.test_core import records


async def test_updates_in_the_helper_give_what_inline_updates_give() -> None:
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=3, trains=True)
    inline, deferred = Segmenter(cfg), Segmenter(cfg)
    updates = ModelUpdates()
    await updates.start()
    assert updates.running
    follows = 0
    call = updates.call

    def counted(fn: Any, *args: Any) -> Any:
        nonlocal follows
        follows += fn.__name__ == "_learn_follow"
        return call(fn, *args)

    updates.call = counted  # type: ignore[method-assign]
    got: dict[str, tuple[str, bytes]] = {}
    want: dict[str, tuple[str, bytes]] = {}
    lifecycle: tuple[list[Any], list[Any]] = ([], [])
    carried = 0
    try:
        for n, i in enumerate(range(0, len(recs), 2500)):
            res, _ = await updates.apply(deferred, deferred.parse(recs[i:i + 2500]), {})
            carried += updates.out
            got.update((a.customer_id, (a.segment, a.state)) for a in res.assignments)
            ref = inline.apply(inline.parse(recs[i:i + 2500]), {})
            want.update((a.customer_id, (a.segment, a.state)) for a in ref.assignments)
            lifecycle[0].extend(res.lifecycle)
            lifecycle[1].extend(ref.lifecycle)
            if n % 2 == 1 or i + 2500 >= len(recs):  # a commit: settle, write every state
                res, _ = await updates.apply(deferred, [], {}, settle=True)
                assert not updates.out and not deferred.changed
                got.update((a.customer_id, (a.segment, a.state)) for a in res.assignments)
                lifecycle[0].extend(res.lifecycle)
                got.update((a.customer_id, (a.segment, a.state)) for a in deferred.drain())
                want.update((a.customer_id, (a.segment, a.state)) for a in inline.drain())
    finally:
        updates.close()
    assert follows >= 3  # refreshes did start in the helper on the update before them
    assert got == want
    assert lifecycle[0] == lifecycle[1] and lifecycle[0]
    assert deferred.model.version == inline.model.version > 10
    assert deferred.model.checkpoint() == inline.model.checkpoint()
