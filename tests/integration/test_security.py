"""Security (issue #6): the admin token never leaks, and customer ids (user-controlled)
appear in Redis only inside the hash tag of their own keys, and never in metric labels.
Pickle, eval/exec and shells are excluded from the code by lint rules (pyproject ``S``)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from pathlib import Path

from stream.redis_io import connect
from stream.settings import Settings
from tests.integration.helpers import produce, wait_for
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import event, request, seeded_worker

HOSTILE = ["zz*}{evil", "zz\r\nFLUSHALL\r\n", "zz') or 1=1 --", "zz{seg:model}",
           'zz"label="x', "zz/../../etc/passwd", "zz$(rm -rf /)", "zz\x00nul"]


async def test_token_never_logged_ids_only_in_their_own_keys_and_never_in_labels(
        settings: Settings, tmp_path: Path) -> None:
    # the most verbose logs; every kind of token set (each with two values: rotation)
    settings = dataclasses.replace(settings, debug=True, read_token="read-tok-1,read-tok-2",
                                   write_key="write-key-1,write-key-2")
    token = settings.api_token
    secrets_ = [token, "read-tok-1", "read-tok-2", "write-key-1", "write-key-2"]
    worker, sim = await seeded_worker(settings, tmp_path, customers=350)
    r = connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        await produce(settings, [event(c, n, "purchase", amount=5 + n)
                                 for c in HOSTILE for n in range(3)])
        await wait_for(lambda: lag_is_zero(settings), 60, "hostile ids to be processed")
        victim = urllib.parse.quote(HOSTILE[0], safe="")
        auth = {"Authorization": f"Bearer {token}"}
        assert request(worker, "DELETE", f"/customers/{victim}",
                       headers={"Authorization": f"Bearer {token}x"})[0] == 401
        assert request(worker, "DELETE", f"/customers/{victim}", headers=auth)[0] == 200
        # every token used once (right and wrong), so the debug log sees each request
        assert request(worker, "GET", f"/customers/{victim}",
                       headers={"Authorization": "Bearer read-tok-2"})[0] == 404
        assert request(worker, "GET", "/customers/nobody",
                       headers={"Authorization": "Bearer read-tok-3"})[0] == 401
        assert request(worker, "POST", "/events", [], headers={
            "Authorization": "Bearer write-key-1"})[0] == 400
        for path in ("/health", "/api/dashboard", "/metrics", "/customers/nobody/segment",
                     "/openapi.json"):
            request_text = worker.metrics_text() if path == "/metrics" else str(
                request(worker, "GET", path))
            assert not [t for t in secrets_ if t in request_text], path
        # every key is either a known global one or a customer's own, id inside {…}
        prefix = settings.redis_prefix.encode()
        ids = {c.encode() for c in [*sim.truth, *HOSTILE]}
        globals_ = {b"segments", b"sizes", b"changes", b"model", b"model-version", b"learner",
                    b"samples", b"lifecycle", b"relay-leader", b"relay-leader:lifecycle",
                    b"relay-leader:audiences",
                    b"rfm", b"rfm-grid", b"audiences", b"audiences-version", b"audience-sizes",
                    b"audience-changes", b"audience-progress", b"partition-index", b"sample-index",
                    b"learner:fence", b"relay-leader:fence", b"relay-leader:lifecycle:fence",
                    b"relay-leader:audiences:fence"}
        strays = []
        async for key in r.scan_iter(match=prefix + b"*", count=1000):
            rest = key[len(prefix):]
            kind, _, tagged = rest.partition(b":")
            if settings.redis_cluster and sharded(kind, tagged):
                continue
            if kind in (b"customer", b"state"):
                if not (tagged[:1] == b"{" and tagged[-1:] == b"}" and tagged[1:-1] in ids):
                    strays.append(key)
            elif kind == b"partition":  # the warm start's index: the partition in {…}
                if not (tagged[:1] == b"{" and tagged[-1:] == b"}" and tagged[1:-1].isdigit()):
                    strays.append(key)
            elif kind == b"sample":  # a worker's sample: the worker (host-pid-object) in {…}
                if not (tagged[:1] == b"{" and tagged[-1:] == b"}"):
                    strays.append(key)
            elif rest not in globals_:
                strays.append(key)
        if settings.redis_cluster:  # the global keys share the hash tag {<prefix>}
            tag = b"{" + prefix.rstrip(b":") + b"}:"
            async for key in r.scan_iter(match=tag + b"*", count=1000):
                rest = key[len(tag):]
                if rest.removesuffix(b":fence").endswith(b":relay-leader"):
                    rest = rest.removesuffix(b":fence").removesuffix(b":relay-leader")
                if rest not in globals_ | {b"shards", b"audience-evaluated"} and not (
                        rest.startswith(b"sample:")):
                    strays.append(key)
        assert not strays, strays[:5]
        metrics = worker.metrics_text()
        assert not [c for c in HOSTILE if c in metrics]
        assert not [c for c in sim.truth if f'"{c}"' in metrics]
    finally:
        await r.aclose()
        assert worker.stop() == 0, worker.log()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "DEBUG" in log and not [t for t in secrets_ if t in log]


SHARDED = (b"sizes", b"changes", b"rfm", b"rfm-grid", b"audience-sizes", b"audience-changes",
           b"moved")


def sharded(kind: bytes, tagged: bytes) -> bool:
    """A key of the cluster's sharded layout (``stream.shards``): a partition's shard
    (``<name>:{<n>}``) or its relay's lease, or a slot's outbox (``outbox:{<tag>}``)."""
    if kind == b"outbox":
        return tagged[:1] == b"{" and tagged[-1:] == b"}"
    tagged = tagged.removesuffix(b":fence").removeprefix(b"relay-leader:")
    return kind in SHARDED and tagged[:1] == b"{" and tagged[-1:] == b"}" and tagged[
        1:-1].isdigit()
