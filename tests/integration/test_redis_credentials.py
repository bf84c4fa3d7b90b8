"""Redis credentials and TLS (issue #22 item 5), on a Valkey of the test's own that has no
default user: only an ACL user with a password, allowed the test's key prefix and nothing
else. The worker runs with it (over plain TCP and over TLS with a client certificate); a
wrong password stops ``segmenter worker`` at once with one clear line, not a retry loop."""

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
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError

from stream.credentials import check_redis, redis_options
from stream.embedded import start_redis
from stream.errors import FatalError
from stream.keys import Keys
from stream.redis_io import connect
from stream.settings import Settings
from stream.shards import streams
from tests.conftest import redis_kind
from tests.integration.helpers import produce, wait_for
from tests.integration.redis_cluster import redis_cluster
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import event, seeded_worker
from tests.integration.tls import Certs, make_certs, tls_proxy

USER = "segmenter-worker"


def acl_rule(prefix: str, password: str) -> str:
    """The worker's ACL as the README gives it: its own keys and channels (on a cluster also
    the global keys' ``{<prefix>}:`` slot), no dangerous commands."""
    tagged = f"{{{prefix.rstrip(':')}}}:*"
    return (f"{USER} on >{password} ~{prefix}* ~{tagged} &{prefix}* &{tagged} "
            "+@all -@dangerous")


@pytest.fixture
def password() -> str:
    return secrets.token_urlsafe(18)


@dataclasses.dataclass(frozen=True, slots=True)
class AclRedis:
    """A Redis (or cluster, with ``SEGMENTER_TEST_REDIS=cluster``) with only the ACL user."""

    url: str
    port: int
    cluster: bool


@pytest.fixture
def acl_redis(settings: Settings, password: str) -> Iterator[AclRedis]:
    rule = acl_rule(settings.redis_prefix, password)
    if redis_kind() == "cluster":
        with redis_cluster(3, acl=(rule, "default off")) as url:
            yield AclRedis(url, int(url.rsplit(":", 1)[1]), True)
        return
    server = start_redis(args=("--user", *rule.split(), "--user", "default", "off"))
    yield AclRedis(server.url, server.port, False)
    server.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def on(settings: Settings, url: str, cluster: bool = False, **credentials: str) -> Settings:
    """These settings on another Redis."""
    return dataclasses.replace(settings, redis_url=url, redis_cluster=cluster, **credentials)


def run_worker_briefly(settings: Settings, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``segmenter worker`` that is expected to stop by itself."""
    return subprocess.run([sys.executable, "-m", "stream.cli", "worker"],
                          env={**os.environ, **settings.with_env()}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
async def test_worker_runs_as_an_acl_user(settings: Settings, acl_redis: AclRedis,
                                         password: str, certs: Certs, tmp_path: Path,
                                         tls: bool) -> None:
    if tls and acl_redis.cluster:
        pytest.skip("the TLS proxy fronts one node; a cluster client is sent to the others")
    with tls_proxy(acl_redis.port, certs) if tls else _plain(acl_redis.port) as port:
        url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0"
        tls_files = {"redis_ca_file": str(certs.ca), "redis_cert_file": str(certs.client_cert),
                     "redis_key_file": str(certs.client_key)} if tls else {}
        s = on(dataclasses.replace(settings, debug=True), url, acl_redis.cluster,
               redis_username=USER, redis_password=password, **tls_files)
        worker, sim = await seeded_worker(s, tmp_path, customers=320)
        client = connect(url, cluster=acl_redis.cluster, **redis_options(s))
        try:
            await produce(s, [event("acl-c1", n, "purchase", amount=20 + n) for n in range(3)])
            await wait_for(lambda: lag_is_zero(s), 60, "the events to be processed")
            keys = Keys(s.redis_prefix, cluster=acl_redis.cluster)
            got = await client.hgetall(keys.customer("acl-c1"))
            assert got[b"segment"].startswith(b"s"), got
            assert len(await client.hgetall(keys.segments)) >= 2
            changes = await streams(client, keys, "changes", keys.changes)
            first = await client.xrange(changes[0], count=1)
            assert orjson.loads(first[0][1][b"change"])["to"]
            tls_only = {k: v for k, v in redis_options(s).items() if k.startswith("ssl_")}
            anonymous = connect(url, cluster=acl_redis.cluster, **tls_only)
            try:
                with pytest.raises((RedisError, RedisClusterException)) as refused:
                    await anonymous.ping()  # the default user is off
                # (a cluster client wraps it: "Redis Cluster cannot be connected")
                assert isinstance(refused.value.__cause__ or refused.value,
                                  AuthenticationError), refused.value
            finally:
                await anonymous.aclose()
        finally:
            await client.aclose()
            assert worker.stop() == 0, worker.log()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "DEBUG" in log and password not in log


class _plain:
    """``tls_proxy``'s shape for the plain case: yields the server's own port."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __enter__(self) -> int:
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("where", ["settings", "url"])
def test_wrong_password_stops_the_worker_with_one_clear_line(
        settings: Settings, acl_redis: AclRedis, where: str) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(8)
    if where == "settings":
        s = on(settings, acl_redis.url, acl_redis.cluster, redis_username=USER,
               redis_password=wrong)
    else:
        s = on(settings, f"redis://{USER}:{wrong}@127.0.0.1:{acl_redis.port}/0",
               acl_redis.cluster)
    done = run_worker_briefly(s)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert f"refused the credentials of user '{USER}'" in done.stderr, out
    assert "SEGMENTER_REDIS_PASSWORD" in done.stderr, out
    assert "Traceback" not in out and wrong not in out, out


async def test_rediss_checks_the_server_certificate(settings: Settings, acl_redis: AclRedis,
                                                    password: str, certs: Certs) -> None:
    if acl_redis.cluster:
        pytest.skip("the TLS proxy fronts one node; a cluster client is sent to the others")
    with tls_proxy(acl_redis.port, certs, client_certs=False) as port:
        good = on(settings, f"rediss://127.0.0.1:{port}/0", redis_username=USER,
                  redis_password=password, redis_ca_file=str(certs.ca))
        await check_redis(good)
        # a server whose certificate the client cannot trust
        untrusted = dataclasses.replace(good, redis_ca_file=str(certs.other_ca))
        with pytest.raises(FatalError, match="TLS to Redis at .* failed: .*certificate verify"):
            await check_redis(untrusted)
        # the certificate is for 127.0.0.1, not for the name the client asked for
        renamed = dataclasses.replace(good, redis_url=f"rediss://localhost:{port}/0")
        with pytest.raises(FatalError, match="TLS to Redis .* failed: .*(match|mismatch)"):
            await check_redis(renamed)
    with tls_proxy(acl_redis.port, certs, client_certs=True) as port:
        # the server asks for a client certificate: given, it is accepted
        mutual = on(good, f"rediss://127.0.0.1:{port}/0", redis_cert_file=str(certs.client_cert),
                    redis_key_file=str(certs.client_key))
        await check_redis(mutual)
