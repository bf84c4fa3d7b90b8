"""``segmenter migrate-cluster``: the keys of the single-Redis layout into the sharded layout
of a Redis Cluster (``stream.shards``), once, with the workers stopped.

The source is either one Redis (``--from redis://old:6379/0``, copied: the source is left
as it was) or the cluster itself holding the layout that Segmenter documented for clusters
before (``SEGMENTER_REDIS_PREFIX={seg}:``: every key in one slot; moved). Each key under the
source prefix goes, by ``DUMP``/``RESTORE`` (exact values, streams with their consumer
groups), to its name in the sharded layout:

- ``<old>customer:{<id>}``, ``<old>state:{<id>}`` -> ``seg:customer:{<id>}``,
  ``seg:state:{<id>}`` (the contract's names: each customer's keys in their own slot);
- ``<old>partition:{<n>}`` -> ``seg:partition:{<n>}`` (the partition's slot);
- the global keys (segment profiles, model, audiences, and the aggregates ``sizes``,
  ``rfm``, ``rfm-grid``, ``audience-sizes``, and the streams ``changes``,
  ``audience-changes``, ``lifecycle``) -> their cluster names ``{seg}:<name>``, the names
  the ``{seg}:`` prefix gave them already (then they stay where they are). Readers add the
  old aggregates to the shards' sums, and the relays and subscribers read the old streams
  before the shards while they exist (``stream.shards``), so nothing is counted twice or
  lost and no counter is rewritten;
- leases and worker samples (short-lived) are left out.

Re-running it is safe: a key already moved is no longer at the source; a copied key is
restored over its copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis.asyncio as aioredis

from stream.keys import Keys

GLOBAL = ("segments", "sizes", "rfm", "rfm-grid", "changes", "audiences", "audiences-version",
          "audience-sizes", "audience-changes", "audience-progress", "model", "model-version",
          "lifecycle", "partition-index")
"""Global keys that are carried over (the rest of the global keys are short-lived)."""


@dataclass(slots=True)
class Migrated:
    """What :func:`migrate` did."""

    customers: int = 0
    """Customer keys (hash and state) carried over."""
    other: int = 0
    """Global keys and partition indexes carried over."""
    skipped: int = 0
    """Keys left out (leases, samples) or already in place."""


def target_name(name: str, old_prefix: str, keys: Keys) -> str | None:
    """The sharded layout's name of a key of the old layout (None: not carried over).

    >>> k = Keys("seg:", cluster=True)
    >>> [target_name(n, "{seg}:", k) for n in ("{seg}:customer:{c-1}", "{seg}:sizes",
    ...  "{seg}:partition:{3}", "{seg}:learner")]
    ['seg:customer:{c-1}', '{seg}:sizes', 'seg:partition:{3}', None]
    """
    rest = name[len(old_prefix):]
    tagged = re.fullmatch(r"(customer|state|partition):\{(.*)\}", rest, re.S)
    if tagged:
        kind, inner = tagged.groups()
        return {"customer": keys.customer, "state": keys.state,
                "partition": keys.partition}[kind](inner)
    if rest in GLOBAL:
        return keys.global_key(rest)
    return None


async def migrate(source: aioredis.Redis, target: aioredis.Redis, old_prefix: str,
                  keys: Keys, move: bool) -> Migrated:
    """Carry every key of ``source`` under ``old_prefix`` into ``target`` as ``keys`` name
    it; with ``move`` (source and target are the same cluster) the old key is deleted."""
    done = Migrated()
    glob = re.sub(r"([*?\[\]\\])", r"\\\1", old_prefix) + "*"
    async for raw in source.scan_iter(match=glob, count=1000):
        name = raw.decode() if isinstance(raw, bytes) else raw
        new = target_name(name, old_prefix, keys)
        if new is None or (move and new == name):
            done.skipped += 1
            continue
        blob = await source.dump(name)
        if blob is None:  # gone meanwhile
            continue
        ttl = max(0, int(await source.pttl(name)))
        await target.restore(new, ttl, blob, replace=True)
        if move:
            await source.delete(name)
        if new.startswith((keys.customer("")[:-1], keys.state("")[:-1])):
            done.customers += 1
        else:
            done.other += 1
    return done
