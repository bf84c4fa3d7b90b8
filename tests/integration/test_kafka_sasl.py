"""Kafka credentials and TLS (issue #22 item 5) on Apache Kafka: a broker of the module's own
with SASL listeners (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; SASL_PLAINTEXT and SASL_SSL with a
test CA), beside the suite's Redis. A worker consumes, writes and relays through SASL/PLAIN;
SCRAM and TLS are checked with the same clients the worker makes; wrong credentials stop
``segmenter worker`` at once with one clear line.

Runs with ``SEGMENTER_TEST_BROKER=apache`` (CI's Apache pass: Java 17 and Maven are there);
skipped otherwise, as the embedded broker has no SASL.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream.credentials import check_kafka
from stream.errors import FatalError
from stream.settings import Settings
from tests.conftest import broker_kind
from tests.integration.apache_kafka import KafkaCluster
from tests.integration.helpers import consume_all, produce, wait_for
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import event, seeded_worker
from tests.integration.tls import make_certs

pytestmark = pytest.mark.skipif(
    broker_kind() != "apache",
    reason="SASL is tested on Apache Kafka: SEGMENTER_TEST_BROKER=apache (Java 17, Maven)")

USER = "segmenter"
PASSWORD = secrets.token_hex(12)


@pytest.fixture(scope="module")
def sasl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaCluster, Path]]:
    """One node with SASL listeners; yields it and the CA file of its SASL_SSL listener."""
    certs = make_certs(tmp_path_factory.mktemp("kafka-certs"))
    cluster = KafkaCluster(1, sasl_users={USER: PASSWORD},
                           tls=(certs.server_cert, certs.server_key, certs.ca))
    try:
        cluster.start()
        yield cluster, certs.ca
    finally:
        cluster.stop()


def sasl(settings: Settings, cluster: KafkaCluster, mechanism: str = "PLAIN",
         password: str = PASSWORD) -> Settings:
    """These settings on the SASL_PLAINTEXT listener."""
    return dataclasses.replace(
        settings, kafka=cluster.sasl_bootstrap, replication=1,
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism,
        kafka_username=USER, kafka_password=password)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
async def test_worker_consumes_and_writes_over_sasl(
        settings: Settings, sasl_cluster: tuple[KafkaCluster, Path], tmp_path: Path,
        protocol: str) -> None:
    cluster, ca = sasl_cluster
    s = sasl(dataclasses.replace(settings, debug=True), cluster)
    if protocol == "SASL_SSL":  # Faust's and aiokafka's clients over TLS too
        s = dataclasses.replace(s, kafka=cluster.sasl_ssl_bootstrap, kafka_ca_file=str(ca),
                                kafka_security_protocol="SASL_SSL")
    worker, _ = await seeded_worker(s, tmp_path, customers=320)
    try:
        await produce(s, [event("sasl-c1", n, "purchase", amount=30 + n) for n in range(3)]
                      + [(b"bad", b"{not json")])
        await wait_for(lambda: lag_is_zero(s), 60, "the events to be processed")
        status, body = worker.get("/customers/sasl-c1/segment")
        assert status == 200 and body["segment"].startswith("s"), body
        # the relay's producer: first assignments reached the changes topic
        changes = await consume_all(s, s.changes_topic, expect=1)
        assert changes and orjson.loads(changes[0].value)["to"]
        # the dead-letter producer
        dead = await consume_all(s, s.dlq_topic, expect=1)
        assert [m.value for m in dead] == [b"{not json"]
    finally:
        assert worker.stop() == 0, worker.log()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "DEBUG" in log and PASSWORD not in log


@pytest.mark.parametrize("case", ["wrong password", "wrong password (SCRAM)", "no SASL"])
def test_refused_credentials_stop_the_worker_with_one_clear_line(
        settings: Settings, sasl_cluster: tuple[KafkaCluster, Path], case: str) -> None:
    cluster = sasl_cluster[0]
    wrong = "wrong-" + secrets.token_hex(6)
    s, expect = {
        "wrong password": (sasl(settings, cluster, password=wrong),
                           f"refused the connection as '{USER}' (PLAIN)"),
        "wrong password (SCRAM)": (sasl(settings, cluster, "SCRAM-SHA-512", password=wrong),
                              f"refused the connection as '{USER}' (SCRAM-SHA-512)"),
        "no SASL": (dataclasses.replace(settings, kafka=cluster.sasl_bootstrap),
                    "does it need SASL or TLS?"),
    }[case]
    done = subprocess.run([sys.executable, "-m", "stream.cli", "worker"],
                          env={**os.environ, **s.with_env()}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert expect in done.stderr and "SEGMENTER_KAFKA_" in done.stderr, out
    assert "Traceback" not in out and wrong not in out and PASSWORD not in out, out


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_scram(settings: Settings, sasl_cluster: tuple[KafkaCluster, Path],
                     mechanism: str) -> None:
    s = sasl(settings, sasl_cluster[0], mechanism)
    await check_kafka(s)
    await produce(s, [(b"k", b"over scram")], topic=s.events_topic)
    assert [m.value for m in await consume_all(s, s.events_topic, expect=1)] == [b"over scram"]
    with pytest.raises(FatalError, match=f"as '{USER}' \\({mechanism}\\)"):
        await check_kafka(sasl(settings, sasl_cluster[0], mechanism, password="nope"))


async def test_sasl_ssl_checks_the_broker_certificate(
        settings: Settings, sasl_cluster: tuple[KafkaCluster, Path], tmp_path: Path) -> None:
    cluster, ca = sasl_cluster
    s = dataclasses.replace(sasl(settings, cluster), kafka=cluster.sasl_ssl_bootstrap,
                            kafka_security_protocol="SASL_SSL", kafka_ca_file=str(ca))
    await check_kafka(s)
    await produce(s, [(b"k", b"over tls")], topic=s.events_topic)
    assert [m.value for m in await consume_all(s, s.events_topic, expect=1)] == [b"over tls"]
    other = make_certs(tmp_path / "other").other_ca  # a CA that did not sign the broker's
    with pytest.raises(FatalError, match="TLS to Kafka at .* failed: .*certificate verify"):
        await check_kafka(dataclasses.replace(s, kafka_ca_file=str(other)))
