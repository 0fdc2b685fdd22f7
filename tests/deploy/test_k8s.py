"""The Kubernetes deployment (deploy/k8s, kustomize) and the NATS Helm values (deploy/nats/helm-values.yaml),
checked offline: no cluster, no Helm.

- `kubectl kustomize` renders the base and every overlay, and `kubernetes-validate --strict` accepts every document
  of a built-in kind against the oldest and the newest Kubernetes we target (it has no schema for CRDs such as
  KEDA's ScaledObject and only warns about them: the warnings are checked to name nothing else).
- What no schema knows is checked against the code: each Deployment runs a real `kushim serve` target with the NATS
  user of deploy/nats/nats-server.conf meant for it, probes, grace periods (from each workload's shutdown grace and
  the broker's graceful timeout), settings that exist, the registry mounted as a directory, PDBs and ScaledObjects
  that select what exists, KEDA scaling on the durable consumers the code declares, the Jobs' users and commands.
- The Helm values carry exactly the users and permissions of nats-server.conf, and nats-server itself accepts the
  configuration they describe (`nats-server -t`). The chart's own rendering is not exercised (no Helm here).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no types; types-PyYAML is not a dependency
from nats.aio.client import DEFAULT_DRAIN_TIMEOUT

from services.cli.stack import SERVICES
from shared.embedded import nats_server_binary
from shared.messages import Service
from shared.nats import HAND_BACK_SECONDS, all_consumers, collector_consumer, make_broker
from shared.settings import Settings, setting_env_names

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
NATS_CONF = REPO / "deploy" / "nats" / "nats-server.conf"
HELM_VALUES = REPO / "deploy" / "nats" / "helm-values.yaml"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"

TARGETS = ("base", "overlays/production")
PRODUCTION = "overlays/production"
# The oldest Kubernetes the manifests are meant for (README: 1.30 or later) and the newest kubernetes-validate knows;
# both are passed (-k is repeatable).
KUBERNETES_VERSIONS = ("1.30", "1.37")
CRD_KINDS = frozenset({"ScaledObject"})

HTTP_PORT = 8080
COLLECTORS = {f"collector-{service.value}": service for service in Service}
ALLOWED_EGRESS_PORTS = frozenset({53, 443, 4222, 5432})
SCALED_OBJECT_SPEC_KEYS = frozenset(
    {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
)
NATS_JETSTREAM_METADATA_KEYS = frozenset(
    {
        "natsServerMonitoringEndpoint",
        "account",
        "stream",
        "consumer",
        "lagThreshold",
        "activationLagThreshold",
        "useHttps",
    }
)

Doc = dict[str, Any]


def nats_user_of(service: str) -> str:
    """The user of deploy/nats/nats-server.conf each service connects with: every collector shares `collector`."""
    return "collector" if service in COLLECTORS else service


# --- rendering ----------------------------------------------------------------------------------------------------


@functools.cache
def rendered_text(target: str) -> str:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return result.stdout


@functools.cache
def _rendered(target: str) -> tuple[Doc, ...]:
    return tuple(doc for doc in yaml.safe_load_all(rendered_text(target)) if doc)


def rendered(target: str) -> list[Doc]:
    return list(_rendered(target))


def of_kind(target: str, kind: str) -> list[Doc]:
    return [doc for doc in rendered(target) if doc["kind"] == kind]


def named(target: str, kind: str, name: str) -> Doc:
    found = [doc for doc in of_kind(target, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{target}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def config_map(target: str, prefix: str) -> Doc:
    """A generated ConfigMap (its name carries kustomize's hash suffix)."""
    found = [
        doc
        for doc in of_kind(target, "ConfigMap")
        if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"{target}: expected one ConfigMap {prefix}-<hash>, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Doc) -> Doc:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    only: Doc = containers[0]
    return only


def service_of(deployment: Doc) -> str:
    args = container(deployment).get("args", [])
    assert len(args) == 2, f"{deployment['metadata']['name']}: args {args} are not `serve <name>`"
    assert args[0] == "serve", f"{deployment['metadata']['name']}: args {args} are not `serve <name>`"
    service: str = args[1]
    return service


def deployments(target: str) -> dict[str, Doc]:
    """The Deployments by the service they serve."""
    return {service_of(doc): doc for doc in of_kind(target, "Deployment")}


def workloads(target: str) -> list[Doc]:
    return of_kind(target, "Deployment") + of_kind(target, "Job")


def env_of(workload: Doc) -> list[Doc]:
    env: list[Doc] = container(workload).get("env", [])
    return env


def env_entry(workload: Doc, name: str) -> Doc:
    found = [entry for entry in env_of(workload) if entry["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: env {name} defined {len(found)} times"
    return found[0]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions In / NotIn / Exists) against a set of labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        match operator:
            case "In":
                ok = labels.get(key) in values
            case "NotIn":
                ok = labels.get(key) not in values
            case "Exists":
                ok = key in labels
            case "DoesNotExist":
                ok = key not in labels
            case _:
                raise AssertionError(f"unknown selector operator {operator}")
        if not ok:
            return False
    return True


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


# --- deploy/nats/nats-server.conf, read with a parser for the subset of the NATS configuration format it uses -------

_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<punct>[{}\[\]:=,;])|"(?P<string>(?:[^"\\]|\\.)*)"|(?P<word>[^\s{}\[\]:=,;#"]+)')


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match is not None, f"cannot read the NATS configuration at {text[position : position + 40]!r}"
        position = match.end()
        if match["punct"] is not None:
            yield "punct", match["punct"]
        elif match["string"] is not None:
            yield "string", match["string"]
        elif match["word"] is not None:
            yield "word", match["word"]


class _ConfParser:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.index = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def map(self, end: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while (token := self.peek()) is not None and token != ("punct", end):
            if token in (("punct", ","), ("punct", ";")):
                self.take()
                continue
            kind, key = self.take()
            assert kind in ("word", "string"), f"expected a key, found {key!r}"
            if self.peek() in (("punct", ":"), ("punct", "=")):
                self.take()
            result[key] = self.value()
        if end is not None:
            assert self.take() == ("punct", end)
        return result

    def value(self) -> Any:
        kind, text = self.take()
        if (kind, text) == ("punct", "{"):
            return self.map("}")
        if (kind, text) == ("punct", "["):
            items: list[Any] = []
            while self.peek() != ("punct", "]"):
                if self.peek() == ("punct", ","):
                    self.take()
                    continue
                items.append(self.value())
            self.take()
            return items
        assert kind in ("word", "string"), f"unexpected {text!r}"
        if kind == "word" and text in ("true", "false"):
            return text == "true"
        return text


@functools.cache
def nats_server_conf() -> dict[str, Any]:
    return _ConfParser(NATS_CONF.read_text(encoding="utf-8")).map(None)


def conf_users() -> dict[str, Doc]:
    return {user["user"]: user for user in nats_server_conf()["authorization"]["users"]}


@functools.cache
def helm_values() -> Doc:
    values: Doc = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    return values


def unraw(value: str) -> str:
    """The chart writes "<< x >>" into the configuration as x, unquoted."""
    match = re.fullmatch(r"<<\s+(.*)\s+>>", value)
    assert match, f"{value!r} is not a raw value (<< ... >>)"
    return match[1]


def normalized_permissions(permissions: Doc) -> Doc:
    """Permissions with their subject lists sorted: the order of a list means nothing to nats-server."""
    result: Doc = {}
    for direction, rules in permissions.items():
        if isinstance(rules, dict):
            result[direction] = {kind: sorted(subjects) for kind, subjects in rules.items()}
        else:
            result[direction] = rules
    return result


# --- shutdown timing ------------------------------------------------------------------------------------------------


def shutdown_grace(workload: Doc) -> float:
    """The workload's KUSHIM_SHUTDOWN_GRACE_SECONDS: its env's value, or the Settings default."""
    found = [entry for entry in env_of(workload) if entry["name"] == "KUSHIM_SHUTDOWN_GRACE_SECONDS"]
    return float(found[0]["value"]) if found else Settings().shutdown_grace_seconds


def broker_graceful_timeout(grace: float) -> float:
    """What `kushim serve` gives in-flight handlers on SIGTERM: the broker of shared/nats.py make_broker with that
    grace (no connection is made): the grace, then the time handed-back handlers get to nack."""
    broker = make_broker(
        "nats://127.0.0.1:4222", name="grace-period-check", settings=Settings(shutdown_grace_seconds=grace)
    )
    timeout = broker.config.graceful_timeout
    assert timeout is not None
    return timeout


def shutdown_bound(grace: float) -> float:
    """The broker's graceful timeout, then the NATS connection's drain (nats-py's default drain timeout)."""
    return broker_graceful_timeout(grace) + float(DEFAULT_DRAIN_TIMEOUT)


# === rendering and schema validation ================================================================================


@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_renders_and_kubernetes_validate_accepts(target: str, tmp_path: Path) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered_text(target), encoding="utf-8")
    command = [str(KUBERNETES_VALIDATE), "--strict"]
    for version in KUBERNETES_VERSIONS:
        command += ["-k", version]
    result = subprocess.run([*command, str(manifest)], capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    docs = rendered(target)
    builtin = [doc for doc in docs if doc["kind"] not in CRD_KINDS]
    crds = [doc for doc in docs if doc["kind"] in CRD_KINDS]
    passed = [line for line in output.splitlines() if line.startswith("INFO ") and " passed for resource " in line]
    warnings = [line for line in output.splitlines() if line.startswith("WARN ")]
    others = [line for line in output.splitlines() if line.strip() and not line.startswith(("INFO ", "WARN "))]
    assert not others, output
    assert len(passed) == len(builtin) * len(KUBERNETES_VERSIONS), output
    for version in KUBERNETES_VERSIONS:
        assert sum(line.endswith(f" against version {version}") for line in passed) == len(builtin), output
    # The validator only warns when it has no schema: a typo in a built-in kind's name or apiVersion would land here.
    assert len(warnings) == len(crds) * len(KUBERNETES_VERSIONS), output
    for line in warnings:
        missing = re.search(r"Couldn't find schema for kind (\w+) with api version keda\.sh/v1alpha1 ", line)
        assert missing, line
        assert missing[1] in CRD_KINDS, line


# === Deployments ====================================================================================================


@pytest.mark.parametrize("target", TARGETS)
def test_one_deployment_per_service_each_running_a_real_serve_target(target: str) -> None:
    by_service = deployments(target)
    assert len(by_service) == len(of_kind(target, "Deployment")), "two Deployments serve the same service"
    assert set(by_service) == set(SERVICES)
    for service, deployment in by_service.items():
        assert deployment["metadata"]["name"] == f"kushim-{service}"
        assert pod_labels(deployment)["app.kubernetes.io/component"] == service
        assert "command" not in container(deployment), "the image's entrypoint is `kushim`: set args only"


@pytest.mark.parametrize("target", TARGETS)
def test_replicas_scheduler_and_evidence_fixed_collectors_left_to_keda(target: str) -> None:
    by_service = deployments(target)
    assert by_service["scheduler"]["spec"]["replicas"] >= 2
    assert by_service["evidence"]["spec"]["replicas"] >= 2
    for collector in COLLECTORS:
        # a `replicas` field would reset KEDA's count on every apply; absent, the Deployment starts with one
        assert "replicas" not in by_service[collector]["spec"], collector


@pytest.mark.parametrize("target", TARGETS)
def test_probes_hit_healthz_and_readyz_on_the_http_port(target: str) -> None:
    # the port the processes listen on (KUSHIM_HTTP_PORT; `kushim serve` defaults to 8080) is the containers' port
    assert int(config_map(target, "kushim-config")["data"].get("KUSHIM_HTTP_PORT", HTTP_PORT)) == HTTP_PORT
    for service, deployment in deployments(target).items():
        main = container(deployment)
        ports = {port.get("name"): port["containerPort"] for port in main["ports"]}
        assert HTTP_PORT in ports.values(), service

        def probe(kind: str, main: Doc = main, ports: dict[str | None, int] = ports) -> tuple[str, int]:
            get = main[kind]["httpGet"]
            port = get["port"]
            return get["path"], ports[port] if isinstance(port, str) else port

        assert probe("livenessProbe") == ("/healthz", HTTP_PORT), service
        assert probe("readinessProbe") == ("/readyz", HTTP_PORT), service
        if "startupProbe" in main:
            assert probe("startupProbe") == ("/healthz", HTTP_PORT), service


@pytest.mark.parametrize("target", TARGETS)
def test_grace_periods_outlast_the_graceful_shutdown_and_for_collectors_a_scan(target: str) -> None:
    handler_timeout = Settings().handler_timeout_seconds
    assert broker_graceful_timeout(30.0) == 30.0 + HAND_BACK_SECONDS
    for service, deployment in deployments(target).items():
        grace = shutdown_grace(deployment)
        period = pod_spec(deployment)["terminationGracePeriodSeconds"]
        bound = shutdown_bound(grace)
        assert period > bound, f"{service}: {period} s <= shutdown grace + hand-back + NATS drain ({bound} s)"
        if service in COLLECTORS:
            # any scan that can finish (within the handler timeout) finishes before the pod stops
            assert grace >= handler_timeout, f"{service}: KUSHIM_SHUTDOWN_GRACE_SECONDS {grace} < {handler_timeout}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_workload_runs_locked_down_with_requests_and_limits(target: str) -> None:
    for workload in workloads(target):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        main = container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        security = main["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in security["capabilities"], name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(main["resources"][kind]), f"{name}: {kind}"
        # the read-only root file system leaves /tmp, an emptyDir
        mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        assert main["image"].split("/")[-1].split(":")[0] == "kushim", name


@pytest.mark.parametrize("target", TARGETS)
def test_each_deployment_connects_with_its_own_nats_user(target: str) -> None:
    users = conf_users()
    for service, deployment in deployments(target).items():
        assert_nats_url(deployment, expected_user=nats_user_of(service), secret="kushim-nats-passwords")
        assert nats_user_of(service) in users, f"{service}: no user {nats_user_of(service)} in {NATS_CONF.name}"


def assert_nats_url(workload: Doc, *, expected_user: str, secret: str) -> None:
    """KUSHIM_NATS_URL = nats://<user>:$(NATS_PASSWORD)@$(NATS_SERVER), the password being the Secret's key named
    after that user, both defined before the URL (Kubernetes expands only variables defined earlier)."""
    name = workload["metadata"]["name"]
    names = [entry["name"] for entry in env_of(workload)]
    url = env_entry(workload, "KUSHIM_NATS_URL")["value"]
    match = re.fullmatch(r"nats://(?P<user>[a-z]+):\$\(NATS_PASSWORD\)@\$\(NATS_SERVER\)", url)
    assert match, f"{name}: KUSHIM_NATS_URL {url!r}"
    assert match["user"] == expected_user, f"{name}: connects as {match['user']}, not {expected_user}"
    password = env_entry(workload, "NATS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert password == {"name": secret, "key": expected_user}, f"{name}: password from {password}"
    server = env_entry(workload, "NATS_SERVER")["valueFrom"]["configMapKeyRef"]
    assert re.fullmatch(r"kushim-nats-[a-z0-9]{10}", server["name"]), name
    assert server["key"] == "server", name
    assert names.index("NATS_PASSWORD") < names.index("KUSHIM_NATS_URL"), name
    assert names.index("NATS_SERVER") < names.index("KUSHIM_NATS_URL"), name


@pytest.mark.parametrize("target", TARGETS)
def test_only_evidence_and_the_migration_get_the_database(target: str) -> None:
    for workload in workloads(target):
        has_database = any(entry["name"] == "KUSHIM_DATABASE_URL" for entry in env_of(workload))
        component = pod_labels(workload)["app.kubernetes.io/component"]
        assert has_database == (component in ("evidence", "db-migrate")), component
        if has_database:
            reference = env_entry(workload, "KUSHIM_DATABASE_URL")["valueFrom"]["secretKeyRef"]
            assert reference == {"name": "kushim-database", "key": "url"}, component


@pytest.mark.parametrize("target", TARGETS)
def test_settings_config_map_names_real_settings_with_valid_values(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data: dict[str, str] = config_map(target, "kushim-config")["data"]
    unknown = set(data) - {variable for variables in setting_env_names().values() for variable in variables}
    assert not unknown, f"not settings: {sorted(unknown)}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # the values are valid, too
    assert settings.declare_topology is False
    assert settings.log_format == "json"
    # a copy of each stream per NATS server of the Helm values, up to JetStream's 5
    assert settings.stream_replicas == min(5, int(helm_values()["config"]["cluster"]["replicas"]))
    assert settings.accounts_file is not None
    assert settings.accounts_file.parent == Path("/etc/kushim")
    for workload in workloads(target):
        sources = container(workload).get("envFrom", [])
        assert {"configMapRef": {"name": config_map(target, "kushim-config")["metadata"]["name"]}} in sources


@pytest.mark.parametrize("target", TARGETS)
def test_account_registry_is_mounted_as_a_directory(target: str) -> None:
    accounts_file = Path(config_map(target, "kushim-config")["data"]["KUSHIM_ACCOUNTS_FILE"])
    for service, deployment in deployments(target).items():
        volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
        registry = [
            name for name, volume in volumes.items() if volume.get("configMap", {}).get("name") == "kushim-accounts"
        ]
        assert len(registry) == 1, service
        mounts = [mount for mount in container(deployment)["volumeMounts"] if mount["name"] == registry[0]]
        assert len(mounts) == 1, service
        assert "subPath" not in mounts[0], f"{service}: a subPath mount never updates"
        assert "subPathExpr" not in mounts[0], f"{service}: a subPath mount never updates"
        assert mounts[0]["mountPath"] == str(accounts_file.parent), service
        assert mounts[0].get("readOnly") is True, service
    # the registry is the operators' (README: kubectl create configmap ... | kubectl apply): never part of a release
    assert not [doc for doc in of_kind(target, "ConfigMap") if doc["metadata"]["name"].startswith("kushim-accounts")]


@pytest.mark.parametrize("target", TARGETS)
def test_services_use_the_irsa_service_account(target: str) -> None:
    account = named(target, "ServiceAccount", "kushim")
    arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::[0-9]{12}:role/[\w+=,.@/-]+", arn), arn
    for service, deployment in deployments(target).items():
        assert pod_spec(deployment)["serviceAccountName"] == "kushim", service
    for job in of_kind(target, "Job"):
        assert pod_spec(job)["serviceAccountName"] != "kushim", "the Jobs need no AWS role"


# === PodDisruptionBudgets ===========================================================================================


@pytest.mark.parametrize("target", TARGETS)
def test_each_deployment_has_one_pdb_selecting_it(target: str) -> None:
    covered: list[str] = []
    for pdb in of_kind(target, "PodDisruptionBudget"):
        matching = [
            service for service, doc in deployments(target).items() if selects(pdb["spec"]["selector"], pod_labels(doc))
        ]
        assert len(matching) == 1, f"{pdb['metadata']['name']} selects {matching}"
        covered += matching
    assert sorted(covered) == sorted(SERVICES)


# === KEDA ===========================================================================================================


@pytest.mark.parametrize("target", TARGETS)
def test_one_scaled_object_per_collector_on_its_durable_consumer(target: str) -> None:
    by_service = deployments(target)
    names_of = {doc["metadata"]["name"]: service for service, doc in by_service.items()}
    monitor_port = helm_values()["config"]["monitor"]["port"]
    declared = {(spec.stream, spec.durable) for spec in all_consumers()}
    scaled: list[str] = []
    for scaled_object in of_kind(target, "ScaledObject"):
        assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled_object["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC_KEYS, sorted(set(spec) - SCALED_OBJECT_SPEC_KEYS)
        reference = spec["scaleTargetRef"]
        assert reference.get("kind", "Deployment") == "Deployment"
        assert reference["name"] in names_of, f"ScaledObject targets no Deployment: {reference['name']}"
        service = names_of[reference["name"]]
        assert service in COLLECTORS, f"{service} is not scaled by KEDA"
        scaled.append(service)
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], service
        assert len(spec["triggers"]) == 1, service
        trigger = spec["triggers"][0]
        assert trigger["type"] == "nats-jetstream", service
        metadata = trigger["metadata"]
        assert set(metadata) <= NATS_JETSTREAM_METADATA_KEYS, sorted(set(metadata) - NATS_JETSTREAM_METADATA_KEYS)
        assert all(isinstance(value, str) for value in metadata.values()), f"{service}: KEDA metadata are strings"
        consumer = collector_consumer(COLLECTORS[service])
        assert (metadata["stream"], metadata["consumer"]) == (consumer.stream, consumer.durable), service
        assert (metadata["stream"], metadata["consumer"]) in declared  # what `kushim nats init` creates
        assert metadata["account"] == "$G", "nats-server.conf has users but no accounts: the global account"
        host, _, port = metadata["natsServerMonitoringEndpoint"].rpartition(":")
        assert port == "8222" == str(monitor_port), f"{service}: monitoring endpoint port {port}"
        assert re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+\.svc\.cluster\.local", host), f"{service}: {host}"
        assert re.fullmatch(r"[1-9][0-9]*", metadata["lagThreshold"]), f"{service}: lagThreshold"
        assert re.fullmatch(r"0|[1-9][0-9]*", metadata.get("activationLagThreshold", "0")), service
        assert metadata.get("useHttps", "false") == "false"
    assert sorted(scaled) == sorted(COLLECTORS), "exactly one ScaledObject per collector"


@pytest.mark.parametrize("target", TARGETS)
def test_nats_location_agrees_between_urls_keda_and_network_policy(target: str) -> None:
    """The client host (ConfigMap kushim-nats), KEDA's monitoring endpoint (the chart's headless service) and the
    namespace the NATS egress policy allows must name the same NATS installation."""
    server = config_map(target, "kushim-nats")["data"]["server"]
    match = re.fullmatch(r"(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc\.cluster\.local:4222", server)
    assert match, f"NATS server {server!r}: expected <service>.<namespace>.svc.cluster.local:4222"
    for scaled_object in of_kind(target, "ScaledObject"):
        endpoint = scaled_object["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        assert endpoint == f"{match['service']}-headless.{match['namespace']}.svc.cluster.local:8222", endpoint
    policy = named(target, "NetworkPolicy", "kushim-allow-nats")
    (rule,) = policy["spec"]["egress"]
    namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["to"]}
    assert namespaces == {match["namespace"]}, f"NATS egress to {namespaces}, NATS in {match['namespace']}"
    assert [port["port"] for port in rule["ports"]] == [4222]


# === Jobs ===========================================================================================================


@pytest.mark.parametrize("target", TARGETS)
def test_nats_init_job_creates_the_topology_as_admin(target: str) -> None:
    job = named(target, "Job", "kushim-nats-init")
    assert container(job)["args"] == ["nats", "init"]
    assert_nats_url(job, expected_user="admin", secret="kushim-nats-admin")
    assert "admin" in conf_users()
    # the admin password is in a Secret no service reads
    for service, deployment in deployments(target).items():
        secrets = {
            entry["valueFrom"]["secretKeyRef"]["name"]
            for entry in env_of(deployment)
            if "secretKeyRef" in entry.get("valueFrom", {})
        }
        assert "kushim-nats-admin" not in secrets, service
    assert pod_spec(job)["restartPolicy"] == "Never"


@pytest.mark.parametrize("target", TARGETS)
def test_db_migrate_job_upgrades_the_evidence_database(target: str) -> None:
    job = named(target, "Job", "kushim-db-migrate")
    assert container(job)["args"] == ["db", "upgrade"]
    assert not any(entry["name"] == "KUSHIM_NATS_URL" for entry in env_of(job))


# === NetworkPolicies ================================================================================================


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_deny_by_default_and_open_only_what_is_needed(target: str) -> None:
    policies = of_kind(target, "NetworkPolicy")
    deny = [
        doc
        for doc in policies
        if doc["spec"]["podSelector"] == {}
        and set(doc["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not doc["spec"].get("ingress")
        and not doc["spec"].get("egress")
    ]
    assert len(deny) == 1, "a default-deny policy for every pod of the namespace"
    all_workloads = {pod_labels(doc)["app.kubernetes.io/component"]: pod_labels(doc) for doc in workloads(target)}
    for policy in policies:
        selected = [name for name, labels in all_workloads.items() if selects(policy["spec"]["podSelector"], labels)]
        assert selected, f"{policy['metadata']['name']} selects no workload"
        for rule in policy["spec"].get("ingress", []):
            assert [port["port"] for port in rule["ports"]] == [HTTP_PORT], policy["metadata"]["name"]
            assert rule.get("from"), f"{policy['metadata']['name']}: ingress from anywhere"
        for rule in policy["spec"].get("egress", []):
            ports = {port["port"] for port in rule["ports"]}
            assert ports <= ALLOWED_EGRESS_PORTS, f"{policy['metadata']['name']}: {ports}"
            if 5432 in ports:
                assert set(selected) <= {"evidence", "db-migrate"}, f"PostgreSQL for {selected}"

    def egress_ports(component: str) -> set[int]:
        return {
            port["port"]
            for policy in policies
            if selects(policy["spec"]["podSelector"], all_workloads[component])
            for rule in policy["spec"].get("egress", [])
            for port in rule["ports"]
        }

    for service in SERVICES:
        assert {53, 443, 4222} <= egress_ports(service), service
    assert 5432 in egress_ports("evidence")
    assert egress_ports("nats-init") == {53, 4222}
    assert egress_ports("db-migrate") == {53, 5432}


# === The production overlay =========================================================================================


def test_production_overlay_namespace_image_and_role() -> None:
    docs = rendered(PRODUCTION)
    namespaces = of_kind(PRODUCTION, "Namespace")
    assert [doc["metadata"]["name"] for doc in namespaces] == ["kushim"]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "kushim", f"{doc['kind']} {doc['metadata']['name']}"
    for workload in workloads(PRODUCTION):
        image = container(workload)["image"]
        repository, _, tag = image.rpartition(":")
        assert "/" in repository, f"{image}: a registry's repository"
        assert tag not in ("", "latest"), f"{image}: a release tag"
    base_arn = named("base", "ServiceAccount", "kushim")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    arn = named(PRODUCTION, "ServiceAccount", "kushim")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert arn != base_arn, "the overlay sets the IRSA role"
    assert (
        config_map(PRODUCTION, "kushim-config")["data"]
        .get("AWS_S3_BUCKET_NAME", "")
        .startswith("kushim-evidence-storage-")
    )


def test_no_absolute_paths_of_a_machine_in_the_manifests() -> None:
    for path in [*K8S.rglob("*.yaml"), HELM_VALUES]:
        text = path.read_text(encoding="utf-8")
        assert str(REPO) not in text, f"{path.relative_to(REPO)} names this checkout"
        assert not re.search(r"/(?:home|Users)/\w", text), f"{path.relative_to(REPO)} names a home directory"


# === NATS Helm values ===============================================================================================


def test_helm_values_carry_the_users_and_permissions_of_nats_server_conf() -> None:
    values = helm_values()
    conf = nats_server_conf()
    users = values["config"]["merge"]["authorization"]["users"]
    assert [user["user"] for user in users] == list(conf_users()), "the same users, in the same order"
    env = values["container"]["env"]
    for user in users:
        expected = conf_users()[user["user"]]
        assert unraw(user["password"]) == expected["password"], user["user"]
        assert normalized_permissions(user["permissions"]) == normalized_permissions(expected["permissions"]), user[
            "user"
        ]
        variable = expected["password"].removeprefix("$")
        assert re.fullmatch(r"KUSHIM_NATS_[A-Z]+_PASSWORD", variable), variable
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "kushim-nats-passwords", "key": user["user"]}
    assert set(env) == {conf_users()[user]["password"].removeprefix("$") for user in conf_users()}
    assert unraw(values["config"]["merge"]["max_payload"]) == conf["max_payload"]
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == conf["jetstream"]["sync_interval"] == "always"


def test_helm_values_cluster_jetstream_and_monitoring() -> None:
    config = helm_values()["config"]
    assert config["cluster"]["enabled"] is True
    assert config["cluster"]["replicas"] == 3
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["enabled"] is True
    assert re.fullmatch(r"[1-9][0-9]*Gi", jetstream["fileStore"]["pvc"]["size"])
    assert jetstream["memoryStore"]["enabled"] is False, "Kushim's streams are file streams"
    assert config["monitor"] == {"enabled": True, "port": 8222}
    assert str(config["monitor"]["port"]) == str(nats_server_conf()["http_port"])


def test_nats_server_accepts_the_configuration_the_helm_values_describe(tmp_path: Path) -> None:
    """The chart writes config.merge and config.jetstream.merge into its server configuration as JSON, with
    "<< x >>" unquoted; nats-server must accept that (`-t`: check the configuration and exit). The chart's own
    templates (cluster routes, store directory, server name) are not rendered here."""
    values = helm_values()
    configuration = {
        "port": 4222,
        "http_port": values["config"]["monitor"]["port"],
        "jetstream": {"store_dir": str(tmp_path / "jetstream"), **values["config"]["jetstream"]["merge"]},
        **values["config"]["merge"],
    }
    text = re.sub(r'"<<\s+(.*?)\s+>>"', r"\1", json.dumps(configuration, indent=2))
    conf = tmp_path / "nats.conf"
    conf.write_text(text, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUSHIM_NATS_")}
    env |= {variable: "pw-checked" for variable in values["container"]["env"]}
    result = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(conf)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr
