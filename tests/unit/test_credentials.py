"""Server credentials in the settings (issue #22 item 5): what each client is given, what is
refused before anything connects, and that no secret shows in the settings' repr. (The
servers' side, real Valkey and Apache Kafka: tests/integration/test_redis_credentials.py and
test_kafka_sasl.py.)"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest

from stream.credentials import faust_credentials, hide_in_logs, kafka_options, redis_options
from stream.errors import SettingsError
from stream.settings import Settings, redact_url

SECRET = "p4ss-w0rd-Zq"


def env(**values: str) -> Settings:
    return Settings.from_env({f"SEGMENTER_{k.upper()}": v for k, v in values.items()})


def test_no_secret_in_the_settings_repr() -> None:
    s = env(redis_url=f"redis://app:{SECRET}1@h:6379/0", redis_password="",
            kafka_security_protocol="SASL_SSL", kafka_username="app",
            kafka_password=SECRET + "2", api_token=SECRET + "3", read_token=SECRET + "4")
    shown = repr(s)
    assert SECRET not in shown and SECRET not in str(s), shown
    assert "redis_url='redis://app:***@h:6379/0'" in shown
    assert "kafka_password=<hidden>" in shown and "api_token=<hidden>" in shown
    assert "read_token=<hidden>" in shown and "kafka_username='app'" in shown
    assert "redis_password=''" in shown  # unset secrets show as unset
    s2 = env(redis_url="redis://h:6379/0", redis_password=SECRET)
    assert SECRET not in repr(s2) and "redis_password=<hidden>" in repr(s2)


def test_redact_url() -> None:
    assert redact_url(f"rediss://:{SECRET}@h:6380/1") == "rediss://:***@h:6380/1"
    assert redact_url("redis://user@h/0") == "redis://user@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("") == ""


def test_kafka_options_per_protocol(tmp_path: Path) -> None:
    assert kafka_options(env()) == {}
    assert faust_credentials(env()) is None
    sasl = env(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
               kafka_username="app", kafka_password=SECRET)
    assert kafka_options(sasl) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "app", "sasl_plain_password": SECRET}
    creds = faust_credentials(sasl)
    assert isinstance(creds, faust.SASLCredentials) and creds.password == SECRET
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_PLAINTEXT"
    assert SECRET not in repr(creds)
    tls = kafka_options(env(kafka_security_protocol="SSL"))
    assert tls["security_protocol"] == "SSL" and "sasl_mechanism" not in tls
    context = tls["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert isinstance(faust_credentials(env(kafka_security_protocol="SSL")),
                      faust.SSLCredentials)
    both = faust_credentials(env(kafka_security_protocol="SASL_SSL", kafka_username="app",
                                 kafka_password=SECRET))
    assert both.protocol.value == "SASL_SSL" and both.ssl_context is not None


def test_redis_options() -> None:
    assert redis_options(env(redis_url="redis://h/0")) == {}
    s = env(redis_url="rediss://h:6380/0", redis_username="app", redis_password=SECRET,
            redis_ca_file=__file__, redis_cert_file=__file__)
    assert redis_options(s) == {"username": "app", "password": SECRET,
                                "ssl_ca_certs": __file__, "ssl_certfile": __file__,
                                "ssl_keyfile": None}
    # another server (migrate-cluster's source): the TLS files if it is rediss://, never
    # this server's user and password
    assert redis_options(s, "redis://other/0") == {}
    assert redis_options(s, "rediss://other/0") == {
        "ssl_ca_certs": __file__, "ssl_certfile": __file__, "ssl_keyfile": None}


@pytest.mark.parametrize(("values", "problem"), [
    ({"kafka_security_protocol": "TLS"}, "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI",
      "kafka_username": "a", "kafka_password": "b"}, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_username": "a"},
     "SASL_SSL needs SEGMENTER_KAFKA_USERNAME and _PASSWORD"),
    ({"kafka_username": "a", "kafka_password": "b"}, "only used with"),
    ({"kafka_ca_file": __file__}, "SEGMENTER_KAFKA_CA_FILE set, but"),
    ({"kafka_security_protocol": "SSL", "kafka_ca_file": "/nonexistent/ca.pem"},
     "SEGMENTER_KAFKA_CA_FILE: cannot read"),
    ({"redis_url": "redis://h/0", "redis_ca_file": __file__},
     "SEGMENTER_REDIS_CA_FILE set, but SEGMENTER_REDIS_URL is not a rediss://"),
    ({"redis_url": "rediss://h/0", "redis_cert_file": "/nonexistent/c.pem"},
     "SEGMENTER_REDIS_CERT_FILE: cannot read"),
    ({"redis_url": f"redis://:{SECRET}@h/0", "redis_password": "x"}, "give it once"),
    ({"redis_url": "redis://app@h/0", "redis_username": "app"}, "give it once"),
])
def test_unusable_credentials_are_refused_before_connecting(values: dict[str, str],
                                                            problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as caught:
        env(**values)
    assert SECRET not in str(caught.value)


def test_unreadable_tls_files_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SettingsError, match="SEGMENTER_KAFKA_CA_FILE"):
        kafka_options(env(kafka_security_protocol="SSL", kafka_ca_file=str(bad)))


def test_secrets_taken_out_of_every_log_record(caplog: pytest.LogCaptureFixture) -> None:
    # aiokafka's DEBUG log prints the SASL/PLAIN request: b'\x00user\x00password'
    secret = "pl@in-'quoted'-ü"
    hide_in_logs(env(kafka_security_protocol="SASL_SSL", kafka_username="app",
                     kafka_password=secret))
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        logging.getLogger("aiokafka.conn").debug(
            "Request 3: SaslAuthenticateRequest_v1(sasl_auth_bytes=%r)",
            b"\x00app\x00" + secret.encode())
        logging.getLogger("anything").warning("password is %s", secret)
    text = caplog.text
    assert "sasl_auth_bytes=b\"\\x00app\\x00***\")" in text and "password is ***" in text
    assert secret not in text and repr(secret.encode())[2:-1] not in text
