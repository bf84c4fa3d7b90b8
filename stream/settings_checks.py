"""Checks of the settings that name credentials and TLS files (called by
:meth:`stream.settings.Settings.from_env`): a file that cannot be read, or a credential that
the chosen protocol would silently not use, stops the worker at start with its name."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from stream.errors import SettingsError


def check_credentials(s: Any) -> None:
    """Credentials and TLS files that would be silently unused, or cannot be read."""
    url = urlsplit(s.redis_url)
    if s.redis_password and url.password is not None or (
            s.redis_username and url.username):
        raise SettingsError("the Redis user or password is both in SEGMENTER_REDIS_URL and "
                            "in SEGMENTER_REDIS_USERNAME/_PASSWORD: give it once")
    tls = {"SEGMENTER_REDIS_CA_FILE": s.redis_ca_file,
           "SEGMENTER_REDIS_CERT_FILE": s.redis_cert_file,
           "SEGMENTER_REDIS_KEY_FILE": s.redis_key_file}
    if any(tls.values()) and url.scheme != "rediss":
        raise SettingsError(f"{', '.join(k for k, v in tls.items() if v)} set, but "
                            "SEGMENTER_REDIS_URL is not a rediss:// (TLS) URL")
    protocol, mechanism = s.kafka_security_protocol, s.kafka_sasl_mechanism
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise SettingsError("SEGMENTER_KAFKA_SECURITY_PROTOCOL must be PLAINTEXT, SSL, "
                            f"SASL_PLAINTEXT or SASL_SSL, got {protocol!r}")
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise SettingsError("SEGMENTER_KAFKA_SASL_MECHANISM must be PLAIN, SCRAM-SHA-256 "
                            f"or SCRAM-SHA-512, got {mechanism!r}")
    sasl = protocol.startswith("SASL_")
    if sasl != bool(s.kafka_username) or sasl != bool(s.kafka_password):
        raise SettingsError(
            f"SEGMENTER_KAFKA_SECURITY_PROTOCOL={protocol} needs SEGMENTER_KAFKA_USERNAME "
            "and _PASSWORD" if sasl else "SEGMENTER_KAFKA_USERNAME/_PASSWORD are only "
            "used with SEGMENTER_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL")
    tls = {"SEGMENTER_KAFKA_CA_FILE": s.kafka_ca_file,
           "SEGMENTER_KAFKA_CERT_FILE": s.kafka_cert_file,
           "SEGMENTER_KAFKA_KEY_FILE": s.kafka_key_file}
    if any(tls.values()) and not protocol.endswith("SSL"):
        raise SettingsError(f"{', '.join(k for k, v in tls.items() if v)} set, but "
                            f"SEGMENTER_KAFKA_SECURITY_PROTOCOL is {protocol}, not TLS")
    tls.update({"SEGMENTER_REDIS_CA_FILE": s.redis_ca_file,
                "SEGMENTER_REDIS_CERT_FILE": s.redis_cert_file,
                "SEGMENTER_REDIS_KEY_FILE": s.redis_key_file})
    for name, path in tls.items():
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"{name}: cannot read {path!r}")
