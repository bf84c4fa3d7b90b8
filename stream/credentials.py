"""Credentials and TLS for the servers, from the settings: keyword arguments for every Kafka
client (aiokafka's, and Faust's ``broker_credentials``) and every Redis client, and a start-up
check that turns refused credentials or a failed TLS handshake into one clear
:class:`~stream.errors.FatalError` (aiokafka only logs them and retries for ever).

Passwords go to the clients only: never into a log line, a message or the settings' repr.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)

from stream.errors import FatalError, SettingsError
from stream.settings import SECRETS, Settings, redact_url

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseException)


def _tls_context(ca: str, cert: str, key: str, what: str) -> ssl.SSLContext:
    """A client context that checks the server's certificate and host name (system CAs when
    ``ca`` is empty), with a client certificate when ``cert`` is set."""
    try:
        context = ssl.create_default_context(cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"{what}: the CA, certificate or key file cannot be used: "
                            f"{exc}") from None
    return context


def kafka_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments of ``AIOKafkaConsumer``/``AIOKafkaProducer``/``AIOKafkaAdminClient``
    for the configured security protocol (none for ``PLAINTEXT``)."""
    protocol = s.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        out["ssl_context"] = _tls_context(s.kafka_ca_file, s.kafka_cert_file,
                                          s.kafka_key_file, "SEGMENTER_KAFKA_CA_FILE/_CERT_FILE")
    if protocol.startswith("SASL_"):
        out.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_username,
                   sasl_plain_password=s.kafka_password)
    return out


def faust_credentials(s: Settings) -> Any:
    """Faust's ``broker_credentials`` for the same protocol (None for ``PLAINTEXT``)."""
    import faust

    options = kafka_options(s)
    if not options:
        return None
    if "sasl_mechanism" not in options:
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(username=s.kafka_username, password=s.kafka_password,
                                 ssl_context=options.get("ssl_context"),
                                 mechanism=s.kafka_sasl_mechanism)


def redis_options(s: Settings, url: str | None = None) -> dict[str, Any]:
    """Keyword arguments of a Redis client on ``url`` (default ``SEGMENTER_REDIS_URL``): the
    ACL user and password of the settings, and, for ``rediss://``, the TLS files. A URL's own
    user and password are read by redis-py from the URL itself."""
    out: dict[str, Any] = {}
    if url is None or url == s.redis_url:
        if s.redis_username:
            out["username"] = s.redis_username
        if s.redis_password:
            out["password"] = s.redis_password
    if urlsplit(url or s.redis_url).scheme == "rediss":
        if s.redis_ca_file:
            out["ssl_ca_certs"] = s.redis_ca_file
        if s.redis_cert_file:
            out.update(ssl_certfile=s.redis_cert_file, ssl_keyfile=s.redis_key_file or None)
    return out


_HIDDEN: set[str] = set()
"""Secrets :func:`hide_in_logs` takes out of every log record."""


def hide_in_logs(s: Settings) -> None:
    """Take the settings' passwords and tokens out of every log record of this process, from
    any library: aiokafka's DEBUG log prints each request, SASL/PLAIN's (user and password
    in clear) included. Installed once; the records of a process that logs at INFO are few."""
    new = {v.strip() for name in SECRETS for value in [getattr(s, name)]
           for v in value.split(",") if len(v.strip()) >= 4}  # "a, b": "b" is the token
    new |= {urlsplit(s.redis_url).password or ""} - {""}
    new |= {repr(v.encode())[2:-1] for v in new}  # as in a logged request's bytes
    if not new - _HIDDEN:
        return
    first = not _HIDDEN
    _HIDDEN.update(new)
    if not first:
        return
    make = logging.getLogRecordFactory()

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a bad format: the handler reports it as it always did
            return record
        if any(secret in text for secret in _HIDDEN):
            for secret in _HIDDEN:
                text = text.replace(secret, "***")
            record.msg, record.args = text, ()
        return record

    logging.setLogRecordFactory(redacting)


def _behind(exc: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` of error behind ``exc``, if any: redis-py wraps a TLS error in its
    ConnectionError, the cluster client an AuthenticationError in RedisClusterException."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    return _behind(exc, ssl.SSLError)


async def check_redis(s: Settings, timeout: float = 10.0) -> None:
    """Authenticate to Redis once (``PING``): refused credentials, a missing permission or a
    failed TLS handshake raise :class:`FatalError` naming the settings to fix. An unreachable
    server is left to the worker's retries (it may be starting)."""
    from stream.redis_io import connect

    where = redact_url(s.redis_url)
    user = s.redis_username or urlsplit(s.redis_url).username or "default"
    client = connect(s.redis_url, max_connections=1, cluster=s.redis_cluster,
                     **redis_options(s))
    try:
        await asyncio.wait_for(client.ping(), timeout)
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        refused = _behind(exc, AuthenticationError)
        if refused is not None:
            raise FatalError(
                f"Redis at {where} refused the credentials of user {user!r} ({refused}): check "
                "SEGMENTER_REDIS_URL, SEGMENTER_REDIS_USERNAME and SEGMENTER_REDIS_PASSWORD"
            ) from None
        forbidden = _behind(exc, NoPermissionError)
        if forbidden is not None:
            raise FatalError(
                f"Redis at {where}: user {user!r} lacks a permission ({forbidden}); see the "
                "README's Security section for the ACL the worker needs") from None
        tls = _tls_failure(exc)
        if tls is not None:
            raise FatalError(
                f"TLS to Redis at {where} failed: {tls}; check the rediss:// URL's host name, "
                "SEGMENTER_REDIS_CA_FILE, _CERT_FILE and _KEY_FILE") from None
        hint = " (a TLS server that wants a client certificate, SEGMENTER_REDIS_CERT_FILE, " \
            "closes the connection like this)" if where.startswith("rediss:") else ""
        log.warning("Redis at %s not reachable yet: %s%s; the worker will retry", where,
                    exc or type(exc).__name__, hint)
    finally:
        await client.aclose()


async def check_kafka(s: Settings, timeout: float = 10.0) -> None:
    """Connect to the first reachable bootstrap server as the clients will (TLS, SASL
    handshake, one metadata request): refused credentials, an unsupported mechanism or a
    failed TLS handshake raise :class:`FatalError` naming the settings to fix."""
    options = kafka_options(s)
    user = f" as {s.kafka_username!r} ({s.kafka_sasl_mechanism})" if s.kafka_username else ""
    for server in s.kafka.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=int(timeout * 1000),
                                     **options)
        except KafkaConnectionError as exc:
            if _tls_failure(exc) is None:
                log.warning("Kafka at %s not reachable yet (%s)", server, exc)
                continue
            raise _kafka_tls(server, _tls_failure(exc)) from None
        except ssl.SSLError as exc:
            raise _kafka_tls(server, exc) from None
        except KafkaError as exc:  # SASL: failed authentication, mechanism, state
            raise FatalError(
                f"Kafka at {server} refused the connection{user}: {exc}; check "
                "SEGMENTER_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _USERNAME and _PASSWORD"
            ) from None
        except (OSError, TimeoutError) as exc:
            log.warning("Kafka at %s not reachable yet (%s)", server, exc)
            continue
        try:
            await conn.send(MetadataRequest([]))
        except KafkaError as exc:
            # A SASL or TLS listener drops a client that skipped the handshake right here.
            raise FatalError(
                f"Kafka at {server} closed the connection after it opened ({exc}): does it "
                "need SASL or TLS? SEGMENTER_KAFKA_SECURITY_PROTOCOL is "
                f"{s.kafka_security_protocol}"
            ) from None
        finally:
            conn.close()
        return


def _kafka_tls(server: str, exc: BaseException | None) -> FatalError:
    return FatalError(f"TLS to Kafka at {server} failed: {exc}; check the bootstrap host names, "
                      "SEGMENTER_KAFKA_CA_FILE, _CERT_FILE and _KEY_FILE")


async def check_servers(s: Settings, kafka: bool = True, redis: bool = True) -> None:
    """:func:`check_kafka` and :func:`check_redis`, before anything else starts."""
    if kafka and s.kafka:
        await check_kafka(s)
    if redis and s.redis_url:
        await check_redis(s)
