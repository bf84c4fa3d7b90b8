"""The ``segmenter`` command (SPEC §6)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from stream.errors import SegmenterError
from stream.settings import Settings


def _settings(redis: bool = False) -> Settings:
    """The settings, with Kafka (and Redis) set, and their credentials and TLS accepted by
    the servers (a clear error here, not a client retrying for ever)."""
    from stream.credentials import check_servers, hide_in_logs

    s = Settings.from_env()
    hide_in_logs(s)
    if not s.kafka:
        raise SegmenterError(
            "SEGMENTER_KAFKA is not set: point it at a Kafka cluster, "
            "or run `segmenter demo` for the embedded stack")
    if redis and not s.redis_url:
        raise SegmenterError(
            "SEGMENTER_REDIS_URL is not set: point it at Redis (redis://host:6379/0), "
            "or run `segmenter demo` for the embedded stack")
    asyncio.run(check_servers(s, redis=redis))
    return s


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"  # ?: lagging, age not read in time


def _lag(args: argparse.Namespace) -> int:
    from stream.credentials import kafka_options
    from stream.kafka_io import partition_owners, read_lag_once
    from stream.lag import most_behind

    s = _settings()

    async def table() -> tuple[str, int]:
        options = kafka_options(s)
        rows = await read_lag_once(s.kafka, s.group, s.events_topic, options)
        owners = await partition_owners(s.kafka, s.group, s.events_topic, options)
        now_ms = int(time.time() * 1000)
        out = [f"GROUP {s.group}  TOPIC {s.events_topic}  ({time.strftime('%H:%M:%S')})",
               f"{'PARTITION':>9} {'CURRENT-OFFSET':>15} {'LOG-END-OFFSET':>15} {'LAG':>10} "
               f"{'SECONDS-BEHIND':>15}  CONSUMER"]
        for r in rows:
            committed = "-" if r.committed is None else str(r.committed)
            out.append(f"{r.partition:>9} {committed:>15} {r.end:>15} {r.lag:>10} "
                       f"{_secs(r.seconds_behind(now_ms)):>15}  {owners.get(r.partition, '-')}")
        total = sum(r.lag for r in rows)
        out.append(f"{'TOTAL':>9} {'':>15} {'':>15} {total:>10} "
                   f"{_secs(most_behind(rows, now_ms)):>15}")
        return "\n".join(out), total

    while True:
        text, total = asyncio.run(table())
        if args.watch:
            print("\033[2J\033[H" if sys.stdout.isatty() else "", end="")
        print(text, flush=True)
        if not args.watch:
            break
        time.sleep(args.watch)
    if args.max_lag is not None and total > args.max_lag:
        print(f"lag {total} exceeds --max-lag {args.max_lag}", file=sys.stderr)
        return 1
    return 0


def _replay(args: argparse.Namespace) -> int:
    from stream.replay import ReplayOptions, replay
    from stream.sources import read_mapping

    opts = ReplayOptions(
        args.file, args.format, read_mapping(args.map), args.default_type, args.tz,
        args.encoding, args.rate, args.rejects, args.check, args.wait, args.wait_timeout)
    s = Settings.from_env() if args.check else _settings()
    summary = asyncio.run(replay(s, opts))
    print(summary.render(args.rejects), flush=True)
    return 1 if summary.rejected or summary.caught_up is False else 0


async def _reindex(s: Settings) -> int:
    from stream.credentials import redis_options
    from stream.partition_index import rebuild
    from stream.redis_io import RedisStore, connect

    client = connect(s.redis_url, cluster=s.redis_cluster, **redis_options(s))
    try:
        return await rebuild(RedisStore(client, s.redis_prefix, s.stream_maxlen))
    finally:
        await client.aclose()


async def _migrate(s: Settings, source_url: str, old_prefix: str) -> str:
    from stream.credentials import redis_options
    from stream.keys import Keys
    from stream.migrate import migrate
    from stream.redis_io import connect

    if not s.redis_cluster:
        raise SegmenterError("migrate-cluster writes to a Redis Cluster: set SEGMENTER_"
                             "REDIS_CLUSTER=1 and SEGMENTER_REDIS_URL to one of its nodes")
    target = connect(s.redis_url, cluster=True, **redis_options(s))
    source = connect(source_url, **redis_options(s, source_url)) if source_url else target
    try:
        done = await migrate(source, target, old_prefix, Keys(s.redis_prefix, cluster=True),
                             move=not source_url)
    finally:
        if source is not target:
            await source.aclose()
        await target.aclose()
    return (f"carried over {done.customers} customer keys and {done.other} other keys; "
            f"{done.skipped} left out or already in place")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segmenter`` console script."""
    parser = argparse.ArgumentParser(prog="segmenter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="embedded broker + Redis + worker + simulator")
    demo.add_argument("--customers", type=int, default=3000)
    # 300 live events/s already give each of 3,000 shoppers a session every minute or so,
    # far busier than a real shop: at 3,000/s the live phase itself reshaped the population
    # (everyone "recent and frequent") within two minutes, and the segments followed it.
    demo.add_argument("--rate", type=float, default=300.0,
                      help="live events per second, after the history")
    demo.add_argument("--days", type=float, default=30.0, help="days of history first")
    demo.add_argument("--seconds", type=float, default=0.0, help="stop after (0: Ctrl-C)")
    sub.add_parser("worker", help="one worker against SEGMENTER_KAFKA / SEGMENTER_REDIS_URL")
    sim = sub.add_parser("simulate", help="produce realistic shoppers into the events topic")
    sim.add_argument("--customers", type=int, default=2000)
    sim.add_argument("--events", type=int, default=None, help="stop after N (default: never)")
    sim.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    sim.add_argument("--days", type=float, default=30.0, help="days of history before live")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--drift", type=float, default=0.01,
                     help="chance per session that a shopper changes persona")
    sim.add_argument("--no-live", action="store_true", help="stop after the history")
    sim.add_argument("--history-rate", type=float, default=None,
                     help="events/s for the history (default: --rate; 0: a backfill, as fast "
                     "as possible)")
    subs = sub.add_parser("subscribe", help="print segment changes, or with --audiences "
                          "audience entries/exits (Redis stream, consumer group with acks; "
                          "resumes where it stopped)")
    subs.add_argument("--group", default="subscriber", help="consumer group (one per service)")
    subs.add_argument("--consumer", default="consumer-1", help="name within the group")
    subs.add_argument("--from-start", action="store_true",
                      help="a new group starts at the oldest kept change, not the next one")
    subs.add_argument("--limit", type=int, default=None, help="stop after N changes")
    subs.add_argument("--audiences", action="store_true",
                      help="audience entries and exits (seg:audience-changes) instead of "
                           "segment changes")
    rep = sub.add_parser(
        "replay", help="backfill: validate and produce a file of events (JSON lines or CSV, "
        "optionally gzipped), with progress and a summary",
        description="Validate every line as the worker would and produce the valid ones into "
        "the events topic, keyed by customer. Invalid lines are not sent: the summary lists "
        "them by reason with line numbers. Exit status 1 when a line was invalid or --wait "
        "timed out.")
    rep.add_argument("file", help="JSON lines or CSV with a header; .gz or gzip data accepted")
    rep.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto",
                     help="default: by the file name, else by its first character")
    rep.add_argument("--map", action="append", metavar="SOURCE=FIELD", default=[],
                     help="read column (or JSON key) SOURCE as FIELD, e.g. "
                     "--map CustomerID=customer_id or --map Price=properties.amount; an "
                     "empty FIELD drops the column; repeatable")
    rep.add_argument("--type", dest="default_type", metavar="TYPE",
                     help="event type of rows without one (e.g. purchase for an order log)")
    rep.add_argument("--tz", metavar="OFFSET",
                     help="UTC offset of timestamps written without one (e.g. Z, +01:00)")
    rep.add_argument("--encoding", default="utf-8", help="text encoding of a CSV file")
    rep.add_argument("--rejects", metavar="FILE",
                     help="write the invalid lines here (JSON lines: line, reason, input)")
    rep.add_argument("--check", action="store_true", help="validate only; send nothing")
    rep.add_argument("--wait", action="store_true",
                     help="then wait until the workers' group has processed every event sent")
    rep.add_argument("--wait-timeout", type=float, default=0.0, metavar="SECONDS",
                     help="give up waiting after SECONDS (default: no limit)")
    rep.add_argument("--rate", type=float, default=0.0,
                     help="events/s (default: as fast as the broker takes them)")
    sub.add_parser("reindex", help="build the per-partition index of customer states once "
                   "(upgrades from a version without it); safe while workers run")
    mig = sub.add_parser("migrate-cluster", help="carry the single-Redis layout over to the "
                         "sharded layout of the Redis Cluster configured (workers stopped)")
    mig.add_argument("--from", dest="source", default="", metavar="URL",
                     help="copy from this single Redis (default: move within the cluster)")
    mig.add_argument("--from-prefix", default="{seg}:", metavar="PREFIX",
                     help="the key prefix of the old layout (default: {seg}:, the one-slot "
                     "prefix clusters used before)")
    lag = sub.add_parser("lag", help="consumer lag per partition, read from the broker")
    lag.add_argument("--max-lag", type=int, default=None,
                     help="exit 1 when the total lag exceeds this")
    lag.add_argument("--watch", type=float, nargs="?", const=2.0, default=0.0,
                     metavar="SECONDS", help="refresh every SECONDS (default 2) until Ctrl-C")
    args = parser.parse_args(argv)
    debug = os.environ.get("SEGMENTER_DEBUG", "").lower() in ("1", "true", "yes", "on")
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from stream.demo import run_demo

            return run_demo(args.customers, args.rate, args.days, args.seconds)
        if args.command == "worker":
            from stream.app import run_worker

            sys.argv = [sys.argv[0], "worker"]  # Faust parses argv itself
            run_worker(_settings(redis=True))
            return 0
        if args.command == "simulate":
            from stream.produce import simulate

            n = asyncio.run(simulate(_settings(), args.customers, args.events, args.rate,
                                     args.days, args.seed, args.drift, not args.no_live,
                                     args.history_rate))
            print(f"produced {n} events")
            return 0
        if args.command == "subscribe":
            from stream.credentials import redis_options
            from stream.subscribe import print_change, subscribe

            s = Settings.from_env()
            if not s.redis_url:
                raise SegmenterError("SEGMENTER_REDIS_URL is not set")
            asyncio.run(subscribe(s.redis_url, s.redis_prefix, args.group, args.consumer,
                                  args.from_start, print_change, limit=args.limit,
                                  audiences=args.audiences, cluster=s.redis_cluster,
                                  options=redis_options(s)))
            return 0
        if args.command == "replay":
            return _replay(args)
        if args.command == "migrate-cluster":
            s = Settings.from_env()
            if not s.redis_url:
                raise SegmenterError("SEGMENTER_REDIS_URL is not set")
            print(asyncio.run(_migrate(s, args.source, args.from_prefix)))
            return 0
        if args.command == "reindex":
            s = Settings.from_env()
            if not s.redis_url:
                raise SegmenterError("SEGMENTER_REDIS_URL is not set")
            n = asyncio.run(_reindex(s))
            print(f"indexed {n} customer states by partition")
            return 0
        return _lag(args)
    except SegmenterError as exc:
        print(f"segmenter: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
