"""The Apache Kafka test harness's own pure parts (no JVM started)."""

from tests.integration.apache_kafka import cluster_id


def test_cluster_ids_never_start_with_a_dash() -> None:
    # 1 base64 id in 64 starts with "-", which kafka-storage read as an option: CI's
    # Apache Kafka pass lost 93 tests to one such id.
    ids = {cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
