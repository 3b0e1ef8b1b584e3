"""deploy/kubernetes (issue 9): the manifests, checked offline.

No cluster is needed. The core objects are validated with kubernetes-validate's bundled
schemas of one Kubernetes version, in strict mode (unknown fields are errors). The
ServiceMonitor, PrometheusRule and ScaledObject are validated against the CRD schemas
vendored in deploy/kubernetes/crd-schemas/. Then the objects are checked against each
other and against the code: settings names and values, probe paths, which paths need
the token, labels and selectors, the partition count and the Prometheus rules.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from kubernetes_validate.utils import ValidationError as K8sValidationError
from pydantic import SecretStr
from referencing import Registry, Resource

from streams.config import Settings, Topics, is_loopback, load_settings
from streams.ingest import ingest_group
from streams.web import WebService

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "reftrack.rules.yml"
EXAMPLE_SECRET = "secret.example.yaml"
NAMESPACE = "reftrack"

# The Kubernetes version the core objects are validated against. kubernetes-validate
# bundles the schemas of each version it supports, so validation needs no network.
KUBERNETES_VERSION = "1.30"

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
}
CLUSTER_SCOPED = {"Namespace"}


# -- loading ---------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@cache
def kustomization() -> dict[str, Any]:
    (doc,) = load_docs(K8S / "kustomization.yaml")
    return doc


@cache
def manifest_files() -> tuple[str, ...]:
    """Every manifest in the folder: the kustomization's resources and the example."""
    names = {p.name for p in K8S.glob("*.yaml")} | {p.name for p in K8S.glob("*.yml")}
    return tuple(sorted(names - {"kustomization.yaml"}))


@cache
def applied_objects() -> tuple[dict[str, Any], ...]:
    """What `kubectl apply -k` applies, before kustomize's transformations."""
    return tuple(doc for name in kustomization()["resources"] for doc in load_docs(K8S / name))


@cache
def all_objects() -> tuple[dict[str, Any], ...]:
    """Every object of every manifest file (shared: copy before changing one)."""
    return tuple(doc for name in manifest_files() for doc in load_docs(K8S / name))


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in all_objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return copy.deepcopy(found[0])


def object_id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def statefulset() -> dict[str, Any]:
    return one("StatefulSet", "reftrack-worker")


def pod_spec() -> dict[str, Any]:
    return statefulset()["spec"]["template"]["spec"]


def worker() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    return container


def config_data() -> dict[str, str]:
    return one("ConfigMap", "reftrack-config")["data"]


def example_secret() -> dict[str, Any]:
    (secret,) = load_docs(K8S / EXAMPLE_SECRET)
    return secret


def pod_labels() -> dict[str, str]:
    return statefulset()["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def services() -> list[dict[str, Any]]:
    return [o for o in applied_objects() if o["kind"] == "Service"]


# -- schema validation -----------------------------------------------------------------

CORE_OBJECTS = [o for o in all_objects() if (o["apiVersion"], o["kind"]) not in CRD_SCHEMAS]
CRD_OBJECTS = [o for o in all_objects() if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS]


def test_the_pinned_kubernetes_version_is_bundled() -> None:
    utils = kubernetes_validate.utils
    bundled = {utils.major_minor(v) for v in utils.all_versions()}
    assert KUBERNETES_VERSION in bundled


def test_every_object_is_schema_checked_one_way_or_the_other() -> None:
    assert {object_id(o) for o in CORE_OBJECTS} | {object_id(o) for o in CRD_OBJECTS} == {
        object_id(o) for o in all_objects()
    }
    assert {o["kind"] for o in CRD_OBJECTS} == {kind for _, kind in CRD_SCHEMAS}


@pytest.mark.parametrize("obj", CORE_OBJECTS, ids=object_id)
def test_core_object_is_valid_for_the_pinned_kubernetes_version(obj: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_strict_validation_rejects_an_unknown_field() -> None:
    obj = statefulset()
    obj["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # misspelt
    with pytest.raises(K8sValidationError):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@cache
def crd_schema(file_name: str) -> dict[str, Any]:
    schema = json.loads((K8S / "crd-schemas" / file_name).read_text(encoding="utf-8"))
    # A well-formed schema. Formats are not asserted: the PrometheusRule CRD has a Go (RE2)
    # pattern, ^(?i)..., that Python's re does not compile. No manifest uses that field.
    meta = jsonschema.Draft7Validator(jsonschema.Draft7Validator.META_SCHEMA)
    assert not list(meta.iter_errors(schema))
    return schema


@cache
def object_meta_validator() -> jsonschema.protocols.Validator:
    """ObjectMeta of the pinned Kubernetes version (strict), for the CRD objects'
    metadata, which their own schemas leave open."""
    folder = f"v{KUBERNETES_VERSION}.0-local-strict"
    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    definitions = json.loads((path / "_definitions.json").read_text(encoding="utf-8"))
    registry = Resource.from_contents(definitions) @ Registry()
    ref = definitions["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    return jsonschema.Draft202012Validator({"$ref": ref}, registry=registry)


def unknown_fields(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Fields the structural schema does not declare (the API server drops them, or
    rejects them with strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{where}.{key}")
            elif properties is not None or extra is False:
                found.append(f"{where}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{where}[{i}]")
    return found


def check_crd_object(obj: dict[str, Any]) -> None:
    schema = crd_schema(CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
    jsonschema.Draft7Validator(schema).validate(obj)
    object_meta_validator().validate(obj["metadata"])
    assert unknown_fields(obj, schema) == []


@pytest.mark.parametrize("obj", CRD_OBJECTS, ids=object_id)
def test_custom_resource_is_valid_for_its_crd_schema(obj: dict[str, Any]) -> None:
    check_crd_object(obj)


def test_crd_checks_reject_unknown_fields_and_wrong_types() -> None:
    monitor = one("ServiceMonitor")
    monitor["spec"]["endpoints"][0]["bearerToken"] = "x"  # not a field
    with pytest.raises(AssertionError, match="bearerToken"):
        check_crd_object(monitor)
    scaled = one("ScaledObject")
    scaled["spec"]["maxReplicaCount"] = "12"
    with pytest.raises(jsonschema.ValidationError):
        check_crd_object(scaled)
    rule = one("PrometheusRule")
    del rule["spec"]["groups"][0]["name"]
    with pytest.raises(jsonschema.ValidationError):
        check_crd_object(rule)


def test_vendored_crd_schemas_say_where_they_come_from() -> None:
    readme = (K8S / "crd-schemas" / "README.md").read_text(encoding="utf-8")
    vendored = {p.name for p in (K8S / "crd-schemas").glob("*.json")}
    assert vendored == set(CRD_SCHEMAS.values())
    for name in vendored:
        (row,) = [line for line in readme.splitlines() if f"`{name}`" in line]
        assert re.search(r"`[0-9a-f]{40}`", row), f"{name}: no commit in crd-schemas/README.md"


# -- kustomization -----------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    assert EXAMPLE_SECRET in manifest_files()
    assert set(listed) == set(manifest_files()) - {EXAMPLE_SECRET}
    assert kustomization()["namespace"] == NAMESPACE
    assert not [o for o in applied_objects() if o["kind"] == "Secret"]


def test_every_object_lives_in_the_reftrack_namespace() -> None:
    for obj in all_objects():
        if obj["kind"] in CLUSTER_SCOPED:
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, object_id(obj)


def test_kustomize_builds_the_listed_objects_with_the_registry_image() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is part of this machine image"
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(built) if doc]
    assert sorted(map(object_id, objects)) == sorted(map(object_id, applied_objects()))
    (image,) = kustomization()["images"]
    (sts,) = [o for o in objects if o["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_image_is_the_kustomize_image_at_the_project_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (image,) = kustomization()["images"]
    name, tag = worker()["image"].rsplit(":", 1)
    assert name == image["name"] == "reftrack"
    assert tag == image["newTag"] == project["version"]


# -- the workers' settings ---------------------------------------------------------------


def env_names() -> list[str]:
    """Every environment variable the worker container gets from the manifests."""
    names = [e["name"] for e in worker().get("env", [])]
    for source in worker().get("envFrom", []):
        assert "prefix" not in source
        assert set(source) == {"configMapRef"}, "envFrom reads the ConfigMap only"
        assert source["configMapRef"]["name"] == "reftrack-config"
        names += list(config_data())
    return names


def test_every_variable_is_a_reftrack_setting() -> None:
    names = env_names()
    assert len(names) == len(set(names)), "a variable is set twice"
    for name in names:
        assert name.startswith("REFTRACK_"), name
        assert name.removeprefix("REFTRACK_").lower() in Settings.model_fields, name


def test_secrets_come_from_the_secret_and_nothing_else_does() -> None:
    secret_vars = {"REFTRACK_PSEUDONYM_KEY", "REFTRACK_API_TOKEN", "REFTRACK_CLICKHOUSE_DSN"}
    from_secret = {e["name"] for e in worker()["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert from_secret == secret_vars
    assert not secret_vars & set(config_data())


def test_every_key_reference_resolves() -> None:
    secret = example_secret()
    assert secret["metadata"]["name"] == "reftrack-secrets"
    secret_keys = set(secret["stringData"])
    used: set[str] = set()
    for entry in worker()["env"]:
        ref = entry.get("valueFrom", {})
        if "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
            assert ref["secretKeyRef"]["key"] in secret_keys, entry["name"]
            assert not ref["secretKeyRef"].get("optional", False)
            used.add(ref["secretKeyRef"]["key"])
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == "reftrack-config"
            assert ref["configMapKeyRef"]["key"] in config_data(), entry["name"]
    assert used == secret_keys, "the example Secret holds a key no container reads"


def worker_settings() -> Settings:
    values: dict[str, Any] = {
        name.removeprefix("REFTRACK_").lower(): value for name, value in config_data().items()
    }
    stored = example_secret()["stringData"]
    for entry in worker()["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        values[entry["name"].removeprefix("REFTRACK_").lower()] = stored[ref["key"]]
    return load_settings(**values)


def test_the_configured_values_pass_the_workers_own_checks() -> None:
    settings = worker_settings()
    settings.pseudonym_key_bytes  # noqa: B018  (long enough)
    assert not is_loopback(settings.web_bind), "probes and Prometheus come from outside"
    assert settings.api_token is not None
    assert settings.store == "rocksdb"
    assert not settings.embedded_clickhouse, "several workers need a ClickHouse server"


def test_the_data_dir_is_the_persistent_volume_and_tmp_is_writable() -> None:
    settings = worker_settings()
    mounts = {m["mountPath"]: m["name"] for m in worker()["volumeMounts"]}
    claims = {t["metadata"]["name"]: t for t in statefulset()["spec"]["volumeClaimTemplates"]}
    assert mounts[str(settings.data_dir)] in claims
    claim = claims[mounts[str(settings.data_dir)]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


# -- probes and the web port -------------------------------------------------------------


def test_probes_hit_healthz_and_readyz_on_the_web_port() -> None:
    port = int(config_data()["REFTRACK_WEB_PORT"])
    ports = {p["name"]: p["containerPort"] for p in worker()["ports"]}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = worker()[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == port, probe
        assert get.get("scheme", "HTTP") == "HTTP"
        assert "httpHeaders" not in get, "the probe paths need no token"


def test_probes_leave_time_for_start_up_and_a_busy_event_loop() -> None:
    def budget(probe: dict[str, Any]) -> int:
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert budget(worker()["startupProbe"]) >= 300  # topics and ClickHouse migrations
    assert budget(worker()["livenessProbe"]) >= 90  # deadline index rebuild after a rebalance
    assert pod_spec()["terminationGracePeriodSeconds"] >= 60  # LeaveGroup, sink drain


def auth_status(path: str, token: str | None) -> int:
    """Status of a GET through the worker's auth middleware with the token set."""
    settings = SimpleNamespace(api_token=SecretStr("s3cret-token-for-test"))
    service = WebService(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = make_mocked_request("GET", path, headers=headers)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    response = asyncio.run(service._auth(request, handler))
    return response.status


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probe_and_scrape_paths_need_no_token(path: str) -> None:
    assert auth_status(path, None) == 200


def test_api_needs_the_token() -> None:
    assert auth_status("/api/pipeline", None) == 401
    assert auth_status("/api/pipeline", "s3cret-token-for-test") == 200


def test_servicemonitor_sends_no_credentials_since_metrics_is_open() -> None:
    assert auth_status("/metrics", None) == 200
    (endpoint,) = one("ServiceMonitor")["spec"]["endpoints"]
    for field in ("authorization", "bearerTokenSecret", "bearerTokenFile", "basicAuth"):
        assert field not in endpoint


def test_service_links_cannot_override_settings() -> None:
    assert pod_spec()["enableServiceLinks"] is False


# -- pod security and resources ----------------------------------------------------------


def quantity(text: str | int) -> float:
    units = {
        "m": 1e-3,
        "": 1,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(text))
    assert match and match.group(2) in units, text
    return float(match.group(1)) * units[match.group(2)]


def test_the_worker_runs_as_non_root_with_a_read_only_root() -> None:
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = worker()["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec()["automountServiceAccountToken"] is False
    namespace = one("Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_worker_has_requests_and_limits() -> None:
    limits = worker()["resources"]["limits"]
    requests = worker()["resources"]["requests"]
    for resource in ("cpu", "memory"):
        assert quantity(requests[resource]) <= quantity(limits[resource]), resource
    assert quantity(requests["cpu"]) >= 1  # ~1.1 cores at full load (docs/performance.md)
    assert quantity(limits["memory"]) >= 2 * 2**30


# -- selectors, services and monitoring --------------------------------------------------


def test_statefulset_selectors_match_its_pods() -> None:
    sts = statefulset()["spec"]
    labels = pod_labels()
    assert selects(sts["selector"]["matchLabels"], labels)
    assert "replicas" not in sts, "KEDA owns the replica count"
    assert sts["updateStrategy"]["type"] == "RollingUpdate"
    assert sts["podManagementPolicy"] == "OrderedReady", "one worker, one rebalance at a time"
    assert sts["minReadySeconds"] > 0
    (headless,) = [s for s in services() if s["metadata"]["name"] == sts["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], labels)


def test_pdb_selects_the_worker_pods() -> None:
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == statefulset()["spec"]["selector"]["matchLabels"]
    assert selects(pdb["selector"]["matchLabels"], pod_labels())


def test_networkpolicy_opens_only_the_web_port_of_the_workers() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels())
    assert policy["policyTypes"] == ["Ingress"]
    ports = [p for rule in policy["ingress"] for p in rule["ports"]]
    assert ports == [{"protocol": "TCP", "port": int(config_data()["REFTRACK_WEB_PORT"])}]


def test_servicemonitor_scrapes_the_metrics_service_as_job_reftrack() -> None:
    monitor = one("ServiceMonitor")["spec"]
    chosen = [
        s
        for s in services()
        if selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in chosen] == ["reftrack-metrics"], "one Service only"
    (service,) = chosen
    assert selects(service["spec"]["selector"], pod_labels())
    assert service["spec"]["publishNotReadyAddresses"] is True, "scrape recovering workers"
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["name"] == "metrics"
    container_ports = {p["name"]: p["containerPort"] for p in worker()["ports"]}
    assert container_ports[port["targetPort"]] == int(config_data()["REFTRACK_WEB_PORT"])
    # The rules select job="reftrack"; the job is the value of the jobLabel label.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "reftrack"
    assert 'job="reftrack"' in RULES.read_text(encoding="utf-8")


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_prometheusrule", K8S / "generate_prometheusrule.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_holds_the_repository_rules() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert one("PrometheusRule")["spec"] == rules
    generated = load_generator().render(RULES.read_text(encoding="utf-8"))
    assert (K8S / "prometheusrule.yaml").read_text(encoding="utf-8") == generated, (
        "run: python deploy/kubernetes/generate_prometheusrule.py"
    )


# -- autoscaling -------------------------------------------------------------------------


def test_scaledobject_scales_the_statefulset_up_to_the_partition_count() -> None:
    spec = one("ScaledObject")["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "StatefulSet",
        statefulset()["metadata"]["name"],
    )
    settings = worker_settings()
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.partitions


def test_kafka_triggers_read_the_workers_consumer_groups() -> None:
    settings = worker_settings()
    topics = Topics(settings.topic_prefix)
    triggers = one("ScaledObject")["spec"]["triggers"]
    groups = {topics.tracked: settings.app_id, topics.events: ingest_group(settings.app_id)}
    assert {t["metadata"]["topic"] for t in triggers} == set(groups)
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == settings.kafka_bootstrap
        assert meta["consumerGroup"] == groups[meta["topic"]]  # the tracker's; ingest's
        assert int(meta["lagThreshold"]) > 0
        assert meta["allowIdleConsumers"] == "false"
        assert meta["offsetResetPolicy"] == "earliest"  # as the Faust consumer
