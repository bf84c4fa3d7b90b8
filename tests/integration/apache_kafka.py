"""Apache Kafka for the tests: real brokers in KRaft mode on free loopback ports (issue #17).

The broker's jars come from Maven Central through the pinned build file
``deploy/kafka/pom.xml`` (needs Java 17 and Maven), fetched once into a cache directory
(``~/.cache/segmenter/apache-kafka-<version>/libs``, or ``$SEGMENTER_TEST_KAFKA_CACHE``) and
reused after. Each node is a combined broker + controller (``process.roles=broker,controller``)
with its own storage directory, formatted with ``kafka.tools.StorageTool`` as
``kafka-storage.sh format`` does. One node serves the integration suite; three (replication
factor 3, ``min.insync.replicas=2``) serve the broker fault tests.

Run by hand (prints the bootstrap servers, stops on Ctrl-C)::

    python -m tests.integration.apache_kafka [--brokers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from stream.embedded import free_port, stop_process

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
"""The pinned build file naming the broker's version."""

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
"""


def kafka_version() -> str:
    """The Apache Kafka version pinned in ``deploy/kafka/pom.xml``."""
    found = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", POM.read_text())
    assert found, f"no kafka.version in {POM}"
    return found.group(1)


def kafka_libs() -> Path:
    """The broker's jars, fetched with Maven on first use (one fetch at a time, by a file
    lock, so parallel runs share one cache)."""
    root = Path(os.environ.get("SEGMENTER_TEST_KAFKA_CACHE")
                or Path.home() / ".cache" / "segmenter" / f"apache-kafka-{kafka_version()}")
    libs, done = root / "libs", root / "libs.complete"
    if done.exists():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return libs
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise RuntimeError("Apache Kafka in the tests needs Java 17 and Maven (mvn) on PATH")
        shutil.rmtree(libs, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={libs}"], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"fetching Apache Kafka's jars failed:\n{result.stdout[-4000:]}"
                               f"{result.stderr[-4000:]}")
        done.write_text(kafka_version() + "\n")
    return libs


def cluster_id() -> str:
    """A fresh KRaft cluster id (a Kafka ``Uuid``: 16 random bytes, URL-safe base64).

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: the storage tool
    would read it as an option (``--cluster-id: expected one argument``, 1 id in 64).
    """
    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))[0] == "-":
        pass
    return cid


@dataclass(slots=True)
class KafkaNode:
    """One combined broker + controller of a cluster."""

    node_id: int
    """``node.id``."""
    port: int
    """Client (PLAINTEXT) port."""
    controller_port: int
    """Controller (KRaft) port."""
    workdir: Path
    """Its config, storage (``data/``) and log (``broker.log``)."""
    classpath: str
    """The broker's jars."""
    proc: subprocess.Popen[bytes] | None = None
    """The running JVM (None while stopped)."""
    sasl_port: int = 0
    """SASL_PLAINTEXT port (a cluster with ``sasl_users``; 0: none)."""
    sasl_ssl_port: int = 0
    """SASL_SSL port (a cluster with ``sasl_users`` and ``tls``; 0: none)."""

    @property
    def address(self) -> str:
        """``host:port`` of its client listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Everything the broker logged (all starts, appended)."""
        return self.workdir / "broker.log"

    def start(self) -> None:
        """Start the JVM (returns at once; see :meth:`KafkaCluster.wait_ready`)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["java", "-Xms128m", "-Xmx768m", "-XX:+UseSerialGC",
                 f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                 "-cp", self.classpath, "kafka.Kafka", str(self.workdir / "server.properties")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def stop(self, timeout: float = 60) -> int:
        """Controlled shutdown (SIGTERM: leadership moves first), SIGKILL after ``timeout``."""
        code = stop_process(self.proc, timeout) if self.proc is not None else 0
        self.proc = None
        return code

    def kill(self) -> None:
        """``kill -9``: no controlled shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        """True while its JVM is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        """The end of its log."""
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""


@dataclass(slots=True)
class KafkaCluster:
    """``size`` Apache Kafka nodes in KRaft mode, each broker and controller."""

    size: int = 1
    """Number of nodes (1 or 3)."""
    workdir: Path = field(default_factory=lambda: Path(
        tempfile.mkdtemp(prefix="segmenter-apache-kafka-")))
    """Parent of the nodes' directories."""
    nodes: list[KafkaNode] = field(default_factory=list)
    """The nodes, ``node.id`` 1..size."""
    sasl_users: dict[str, str] = field(default_factory=dict)
    """User -> password: each node gets a SASL_PLAINTEXT listener besides PLAINTEXT, with
    PLAIN (users in the JAAS config), SCRAM-SHA-256 and SCRAM-SHA-512 (credentials stored at
    format time, ``kafka-storage format --add-scram``). Brokers talk to each other in
    PLAINTEXT; no authorizer (any authenticated user may do anything)."""
    tls: tuple[Path, Path, Path] | None = None
    """With ``sasl_users``: (certificate, key, CA) PEM files for a SASL_SSL listener too."""

    @property
    def sasl_bootstrap(self) -> str:
        """Bootstrap servers of the SASL_PLAINTEXT listeners."""
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes)

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """Bootstrap servers of the SASL_SSL listeners."""
        return ",".join(f"127.0.0.1:{n.sasl_ssl_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers: every node."""
        return ",".join(n.address for n in self.nodes)

    @property
    def live_bootstrap(self) -> str:
        """Bootstrap servers: the nodes running now."""
        return ",".join(n.address for n in self.nodes if n.running)

    def node(self, node_id: int) -> KafkaNode:
        """The node with this ``node.id``."""
        return next(n for n in self.nodes if n.node_id == node_id)

    def configure(self) -> None:
        """Write each node's config and format its storage (one cluster id for all)."""
        classpath = str(kafka_libs() / "*")
        self.nodes = [KafkaNode(i, free_port(), free_port(), self.workdir / f"node{i}",
                                classpath) for i in range(1, self.size + 1)]
        for n in self.nodes if self.sasl_users else ():
            n.sasl_port = free_port()
            n.sasl_ssl_port = free_port() if self.tls else 0
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        rf, min_isr = min(3, self.size), min(2, self.size)
        cid = cluster_id()
        for n in self.nodes:
            (n.workdir / "data").mkdir(parents=True)
            (n.workdir / "log4j2.properties").write_text(LOG4J2.format(
                level=os.environ.get("SEGMENTER_TEST_KAFKA_LOG_LEVEL", "INFO")))
            props = {
                "process.roles": "broker,controller",
                "node.id": n.node_id,
                "controller.quorum.voters": voters,
                "listeners": f"PLAINTEXT://127.0.0.1:{n.port},"
                             f"CONTROLLER://127.0.0.1:{n.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{n.port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "log.dirs": n.workdir / "data",
                "num.partitions": 1,
                "default.replication.factor": rf,
                "min.insync.replicas": min_isr,
                "offsets.topic.replication.factor": rf,
                "offsets.topic.num.partitions": 10,  # fewer than 50: a faster first group
                "transaction.state.log.replication.factor": rf,
                "transaction.state.log.min.isr": min_isr,
                "group.initial.rebalance.delay.ms": 0,  # tests start groups all the time
                "unclean.leader.election.enable": "false",
                "num.network.threads": 2,
                "num.io.threads": 2,
            }
            props.update(self._sasl_props(n))
            (n.workdir / "server.properties").write_text(
                "".join(f"{k}={v}\n" for k, v in props.items()))
        # formatted side by side: each is a JVM start of a few seconds
        scram = [arg for user, password in self.sasl_users.items()
                 for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                 for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")]
        formats = [subprocess.Popen(
            ["java", "-Xmx256m", "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", cid, "-c", str(n.workdir / "server.properties"), *scram],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in self.nodes]
        for n, proc in zip(self.nodes, formats, strict=True):
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"formatting node {n.node_id} failed:\n{out.decode()}")

    def _sasl_props(self, n: KafkaNode) -> dict[str, object]:
        """The SASL listeners' part of a node's ``server.properties`` (none without users)."""
        if not self.sasl_users:
            return {}
        names = ["SASL_PLAINTEXT"] + (["SASL_SSL"] if self.tls else [])
        ports = {"SASL_PLAINTEXT": n.sasl_port, "SASL_SSL": n.sasl_ssl_port}
        extra = "".join(f",{name}://127.0.0.1:{ports[name]}" for name in names)
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule required " + " ".join(
            f'user_{u}="{p}"' for u, p in self.sasl_users.items()) + ";"
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props: dict[str, object] = {
            "listeners": f"PLAINTEXT://127.0.0.1:{n.port},"
                         f"CONTROLLER://127.0.0.1:{n.controller_port}{extra}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{n.port}{extra}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" + "".join(
                f",{name}:{name}" for name in names),
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        }
        for name in names:
            prefix = f"listener.name.{name.lower()}"
            props[f"{prefix}.plain.sasl.jaas.config"] = plain
            props[f"{prefix}.scram-sha-256.sasl.jaas.config"] = scram
            props[f"{prefix}.scram-sha-512.sasl.jaas.config"] = scram
        if self.tls:
            cert, key, _ = self.tls
            # Kafka reads a PEM keystore (key + chain in one file, the key unencrypted PKCS#8)
            pem = n.workdir / "keystore.pem"
            pem.write_text(key.read_text() + cert.read_text())
            props.update({"listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                          "listener.name.sasl_ssl.ssl.keystore.location": pem})
        return props

    def start(self, timeout: float = 120) -> None:
        """Configure (first time), start every node, wait until all are brokers of the
        cluster (from a synchronous caller)."""
        if not self.nodes:
            self.configure()
        for n in self.nodes:
            n.start()
        asyncio.run(self.wait_ready(timeout))

    async def start_async(self, timeout: float = 120) -> None:
        """:meth:`start` from a running event loop (formatting runs in a thread)."""
        if not self.nodes:
            await asyncio.to_thread(self.configure)
        for n in self.nodes:
            n.start()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 120,
                         nodes: tuple[int, ...] | None = None) -> None:
        """Wait until the cluster's metadata lists every running node (or ``nodes``) as a
        broker; fail at once, with its log, if a node's JVM exits."""
        want = set(nodes or (n.node_id for n in self.nodes if n.proc is not None))
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while True:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"Kafka node {n.node_id} exited with code "
                                       f"{n.proc.returncode}:\n{n.log()}")
            seen = await self._brokers_seen()
            if want <= seen:
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- node {n.node_id}\n{n.log(2000)}" for n in self.nodes)
                raise RuntimeError(f"Kafka nodes {sorted(want - seen)} not ready within "
                                   f"{timeout:.0f} s (seen {sorted(seen)}):\n{logs}")
            await asyncio.sleep(0.3)

    async def _brokers_seen(self) -> set[int]:
        live = ",".join(n.address for n in self.nodes if n.running and _listening(n.port))
        if not live:  # (the admin client would log an error per refused connection)
            return set()
        admin = AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=3000)
        try:
            await admin.start()
            described = await admin.describe_cluster()
            return {int(b["node_id"]) for b in described["brokers"]}
        except Exception:  # not listening yet, or not yet a registered broker
            return set()
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    def stop(self) -> None:
        """Stop every node and delete the storage. All are signalled at once: stopped one
        by one, the last ones would wait for a controller quorum that is already gone."""
        for n in self.nodes:
            if n.running and n.proc is not None:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.stop(timeout=30)
        if not os.environ.get("SEGMENTER_TEST_KEEP_KAFKA"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def apache_kafka(size: int = 1) -> Iterator[KafkaCluster]:
    """A started cluster of ``size`` nodes, stopped and deleted on exit."""
    cluster = KafkaCluster(size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", type=int, default=1)
    args = parser.parse_args()
    with apache_kafka(args.brokers) as cluster:
        print(cluster.bootstrap, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
