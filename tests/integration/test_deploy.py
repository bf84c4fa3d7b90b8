"""The production stack's files, checked with real validators (no Docker engine runs here):
the compose file against the Compose specification's JSON schema (kept in tests/data, so
nothing is downloaded at test time), the Prometheus config and rules with promtool, and the
Grafana dashboard's queries with promtool and against the metrics the worker really exports.
Validators come from PyPI and Debian's packages. The compose file's structure (three Kafka
nodes, the Redis Cluster profile) is checked in tests/integration/test_compose.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

from stream.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = ROOT / "tests/data/compose-spec.json"
"""The Compose Specification's JSON schema, vendored unchanged (Apache-2.0) from the
compose-spec/compose-spec repository, file schema/compose-spec.json as last changed in commit
a08f8d51631b7127ddac3d2c65537db429d0f1d0 (2025-10-28; unchanged at 170098ba, 2026-06-23);
tests/data/README.md says how to update it."""


def compose_schema() -> dict[str, Any]:
    return dict(json.loads(COMPOSE_SCHEMA.read_text()))


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("promtool is missing and this is not root: `apt-get install prometheus`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    return shutil.which("promtool") or pytest.fail("promtool not found after install")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_file_matches_the_compose_schema() -> None:
    schema = compose_schema()
    assert schema["$schema"].rstrip("/").endswith("draft-07/schema")
    validator = jsonschema.Draft7Validator(schema)  # the schema's own draft
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in validator.iter_errors(compose())]
    assert not errors, errors
    # the schema does reject what Compose rejects (a check that it is not vacuous here)
    broken = compose()
    broken["services"]["worker"]["depends_on"]["kafka-1"]["condition"] = "service_ready"
    broken["services"]["redis"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["kafka-2"]["volumez"] = []
    broken["services"]["redis-cluster-init"]["profiles"] = "cluster"  # a list, not a string
    bad = {"/".join(map(str, e.path)) for e in validator.iter_errors(broken)}
    assert bad == {"services/worker/depends_on", "services/redis/healthcheck",
                   "services/kafka-2", "services/redis-cluster-init/profiles"}, bad


def test_dockerfile_runs_the_worker() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert 'ENTRYPOINT ["segmenter"]' in text and 'CMD ["worker"]' in text
    assert "HEALTHCHECK" in text and "USER " in text


def test_prometheus_config_and_rules() -> None:
    tool = promtool()
    cfg = ROOT / "deploy/prometheus/prometheus.yml"
    out = subprocess.run([tool, "check", "config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([tool, "check", "rules", str(cfg.parent / "alerts.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r.get("alert") for g in yaml.safe_load((cfg.parent / "alerts.yml").read_text())
              ["groups"] for r in g["rules"]}
    assert {"SegmenterLagGrowing", "SegmenterConsumerStalled", "SegmenterDeadLetterSpike",
            "SegmenterHealthFailing"} <= alerts


def exported_metric_names() -> set[str]:
    m = Metrics()
    for metric in vars(m).values():  # a labelled metric shows up once it has a child
        names = getattr(metric, "_labelnames", ())
        if names:
            metric.labels(*["x"] * len(names))
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_dashboard_queries_parse_and_use_real_metrics(tmp_path: Path) -> None:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/segmenter.json").read_text())
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
                        .read_text())["datasources"][0]
    exprs = []
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds["uid"], p["title"]
        exprs += [t["expr"] for t in p["targets"]]
    assert len(exprs) >= 10
    # promtool parses PromQL: check every panel query as a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    names = exported_metric_names()
    alerts = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    for expr in [*exprs, alerts]:
        for metric in re.findall(r"\bsegmenter_[a-z_]+", expr):
            assert metric in names, f"{metric} is not exported by the worker"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/segmenter.yml")
                              .read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"


def _keys(obj: Any, prefix: str = "") -> set[str]:
    if isinstance(obj, dict):
        out = set()
        for k, v in obj.items():
            out.add(f"{prefix}{k}")
            out |= _keys(v, f"{prefix}{k}.")
        return out
    if isinstance(obj, list):
        return set().union(*(_keys(v, prefix) for v in obj)) if obj else set()
    return set()


def test_dashboard_round_trips_through_grafanas_schema() -> None:
    """Grafana's own dashboard schema (the Foundation SDK's models are generated from it):
    every key of our dashboard must survive a decode/encode round trip, so none is unknown
    to Grafana, and the panels keep their types, places and queries."""
    from grafana_foundation_sdk.models.dashboard import Dashboard

    raw = json.loads((ROOT / "deploy/grafana/dashboards/segmenter.json").read_text())
    back = json.loads(json.dumps(Dashboard.from_json(raw).to_json(), default=lambda o: o.to_json()
                                 if hasattr(o, "to_json") else str(o)))
    lost = {k for k in _keys(raw) - _keys(back)
            if not k.startswith("panels.targets.")}  # queries are datasource-specific: below
    assert not lost, f"keys Grafana's schema does not know: {sorted(lost)}"
    assert [(p["type"], p["gridPos"]) for p in back["panels"]] == \
        [(p["type"], p["gridPos"]) for p in raw["panels"]]
    assert [[t["expr"] for t in p["targets"]] for p in back["panels"]] == \
        [[t["expr"] for t in p["targets"]] for p in raw["panels"]]
