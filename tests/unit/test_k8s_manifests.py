"""Static checks of the Kubernetes manifests (deploy/k8s), which CI cannot apply (no cluster):
each overlay is rendered as kustomize would (the subset it uses, below), every object validated
against the Kubernetes schemas (kubernetes-validate, offline) and KEDA's objects against the
fields of KEDA's CRDs; then what they name is checked against the code: commands, settings,
secrets, probe paths and ports, grace periods, queue names, and that selectors select."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate.utils import latest_version, validate

from relayflow import probes
from relayflow.amqp import BatchConsumer
from relayflow.amqp.connection import CLOSE_TIMEOUT
from relayflow.db import close_pool
from relayflow.orchestration.relay import OutboxRelay
from relayflow.steps import StepRegistry
from relayflow.topology import Topology
from services.gateway import pages
from services.gateway.access import PUBLIC_PATHS
from services.gateway.server import GRACEFUL_SHUTDOWN
from services.orchestrator.service import ACKS_WAIT
from services.steps.settings import StepServiceSettings
from tests.unit.test_deploy_files import (
    SERVICE_NAMES,
    dockerfile_instructions,
    project,
    settings_of,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev"}
# The oldest Kubernetes the manifests are for (the preStop `sleep` action is on by default from
# 1.30) and the newest whose schemas kubernetes-validate ships: an API removed in between shows.
KUBERNETES_VERSIONS = ("1.30", latest_version())
SECRET = "relayflow-secrets"
SECRET_KEYS = {"AMQP_URL", "DATABASE_URL", "RELAYFLOW_AUTH_SECRET"}
CONFIG_MAP = "relayflow-config"
# Cluster-scoped kinds among ours: kustomize's `namespace` leaves them alone.
CLUSTER_SCOPED = {"Namespace"}

Object = dict[str, Any]

# --- rendering: the subset of kustomize deploy/k8s uses ------------------------------------------

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}


def documents(path: Path) -> list[Object]:
    loaded = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [dict(doc) for doc in loaded if doc]


def group_version(obj: Object) -> tuple[str, str]:
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    return group, version


def is_builtin(obj: Object) -> bool:
    """A kind of Kubernetes' own (strategic merge patch), not a CRD's (JSON merge patch)."""
    group, _ = group_version(obj)
    return group == "" or "." not in group or group.endswith(".k8s.io")


def merge(base: Any, patch: Any, *, by_name: bool) -> Any:
    """RFC 7386 JSON merge patch; with `by_name`, lists of mappings with a `name` merge item by
    item as a strategic merge patch does for containers, env, ports and volumes."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value, by_name=by_name)
        return merged
    named = by_name and isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch]):
        items = {item["name"]: item for item in base}
        for item in patch:
            items[item["name"]] = merge(items.get(item["name"]), item, by_name=by_name)
        return list(items.values())
    return copy.deepcopy(patch)


def matches(obj: Object, target: dict[str, str]) -> bool:
    group, version = group_version(obj)
    wanted = {"group": group, "version": version, "kind": obj["kind"]}
    wanted["name"] = obj["metadata"]["name"]
    unknown = set(target) - set(wanted)
    assert not unknown, f"patch targets by {sorted(unknown)}: not in the subset rendered here"
    return all(wanted[key] == value for key, value in target.items())


def render(directory: Path) -> list[Object]:
    kustomization = documents(directory / "kustomization.yaml")[0]
    unsupported = set(kustomization) - SUPPORTED
    assert not unsupported, f"{directory}: {sorted(unsupported)} is beyond what this test renders"
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else documents(path)
    for patch in kustomization.get("patches", []):
        [change] = documents(directory / patch["path"])
        target = patch.get("target") or {
            "kind": change["kind"],
            "name": change["metadata"]["name"],
        }
        hits = [i for i, obj in enumerate(objects) if matches(obj, target)]
        assert hits, f"{directory}: patch {patch['path']} matches nothing"
        for i in hits:
            objects[i] = merge(objects[i], change, by_name=is_builtin(objects[i]))
    for replicas in kustomization.get("replicas", []):
        [deployment] = [obj for obj in objects if name_of(obj) == ("Deployment", replicas["name"])]
        deployment["spec"]["replicas"] = replicas["count"]
    for image in kustomization.get("images", []):
        for container in (c for obj in objects for c in containers(obj)):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                new_tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    names = [name_of(obj) for obj in objects]
    assert len(names) == len(set(names)), f"{directory}: an object is defined twice"
    return objects


def name_of(obj: Object) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def containers(obj: Object) -> list[Object]:
    if obj["kind"] != "Deployment":
        return []
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> list[Object]:
    return render(OVERLAYS[request.param])


def kinds(objects: list[Object], kind: str) -> dict[str, Object]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def deployments(objects: list[Object]) -> dict[str, Object]:
    """Each service's Deployment, by service (its component label)."""
    found = {
        obj["metadata"]["labels"]["app.kubernetes.io/component"]: obj
        for obj in kinds(objects, "Deployment").values()
    }
    assert set(found) == set(SERVICE_NAMES)
    return found


def container_of(deployment: Object) -> Object:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def env_values(container: Object) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendered: list[Object], version: str) -> None:
    """A typo in a field is silently dropped by some tools and refused by the API server at
    apply time; strict schemas catch both here, in CI, for the oldest and newest version."""
    for obj in rendered:
        if is_builtin(obj):
            validate(obj, version, strict=True)


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_INT = {"type": "integer"}
_STR = {"type": "string", "minLength": 1}
_METADATA = {"type": "object", "required": ["name"]}
# Written from KEDA v2.20's CRDs (kedacore/keda, config/crd/bases/keda.sh_scaledobjects.yaml and
# keda.sh_triggerauthentications.yaml, keda.sh/v1alpha1): their spec fields by name, their
# required ones and types. Only what we use is described in depth; a field KEDA does not have is
# refused, as the API server would prune or refuse it.
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": _strict(
        {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _METADATA,
            "spec": _strict(
                {
                    "advanced": {"type": "object"},
                    "cooldownPeriod": _INT,
                    "fallback": {"type": "object"},
                    "idleReplicaCount": _INT,
                    "initialCooldownPeriod": _INT,
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "scaleTargetRef": _strict(
                        {
                            "apiVersion": _STR,
                            "envSourceContainerName": _STR,
                            "kind": _STR,
                            "name": _STR,
                        },
                        ("name",),
                    ),
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": _strict(
                            {
                                "authenticationRef": _strict(
                                    {
                                        "kind": {
                                            "enum": [
                                                "TriggerAuthentication",
                                                "ClusterTriggerAuthentication",
                                            ]
                                        },
                                        "name": _STR,
                                    },
                                    ("name",),
                                ),
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "metricType": {"enum": ["Value", "AverageValue", "Utilization"]},
                                "name": _STR,
                                "type": _STR,
                                "useCachedMetrics": {"type": "boolean"},
                            },
                            ("metadata", "type"),
                        ),
                    },
                },
                ("scaleTargetRef", "triggers"),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    "TriggerAuthentication": _strict(
        {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _METADATA,
            "spec": _strict(
                {
                    "secretTargetRef": {
                        "type": "array",
                        "items": _strict(
                            {"key": _STR, "name": _STR, "parameter": _STR},
                            ("key", "name", "parameter"),
                        ),
                    },
                    # The other ways KEDA can find credentials; not used here.
                    **{
                        other: {"type": "object"}
                        for other in (
                            "awsSecretManager",
                            "azureKeyVault",
                            "boundServiceAccountToken",
                            "gcpSecretManager",
                            "hashiCorpVault",
                            "podIdentity",
                        )
                    },
                    "configMapTargetRef": {"type": "array"},
                    "env": {"type": "array"},
                    "filePath": {"type": "string"},
                },
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}
# The rabbitmq scaler's trigger metadata (KEDA v2.20, pkg/scalers/rabbitmq_scaler.go) that needs
# no authParams; host comes from the TriggerAuthentication.
RABBITMQ_METADATA = {
    "queueName",
    "mode",
    "value",
    "activationValue",
    "protocol",
    "vhostName",
    "useRegex",
    "excludeUnacknowledged",
    "pageSize",
    "operation",
    "timeout",
    "unsafeSsl",
}


def test_keda_objects_have_the_fields_of_keda_crds(rendered: list[Object]) -> None:
    """kubernetes-validate knows no CRDs; KEDA's objects are checked against what KEDA's own
    CRDs require, and the rabbitmq triggers against what its scaler reads."""
    custom = [obj for obj in rendered if not is_builtin(obj)]
    assert {obj["kind"] for obj in custom} == set(KEDA_SCHEMAS)
    for obj in custom:
        jsonschema.validate(obj, KEDA_SCHEMAS[obj["kind"]])
    for scaled in kinds(rendered, "ScaledObject").values():
        spec = scaled["spec"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq"
            metadata = trigger["metadata"]
            assert set(metadata) <= RABBITMQ_METADATA, sorted(set(metadata) - RABBITMQ_METADATA)
            # Queue length is the one mode the AMQP protocol can read (the others need HTTP).
            assert (metadata["protocol"], metadata["mode"]) == ("amqp", "QueueLength")
            assert float(metadata["value"]) > 0


# --- what the manifests name, against the code -------------------------------------------------


def test_every_service_runs_its_console_script_from_the_one_image(rendered: list[Object]) -> None:
    """A wrong command crash-loops only once applied; one image runs every service."""
    scripts = project()["project"]["scripts"]
    images = set()
    for service, deployment in deployments(rendered).items():
        container = container_of(deployment)
        assert container["command"] == [f"relayflow-{service}"]
        assert container["command"][0] in scripts
        images.add(container["image"])
    assert len(images) == 1


def test_dev_overlay_runs_one_of_each_in_its_namespace_with_the_dev_image() -> None:
    """The dev overlay's whole point: small, namespaced, the locally built image."""
    objects = render(OVERLAYS["dev"])
    for obj in objects:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "relayflow-dev"
        else:
            assert obj["metadata"]["namespace"] == "relayflow-dev", name_of(obj)
    for service, deployment in deployments(objects).items():
        assert container_of(deployment)["image"] == "relayflow:dev"
        if service != "steps":
            assert deployment["spec"]["replicas"] == 1, service
    [scaled] = kinds(objects, "ScaledObject").values()
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 2)
    [base] = kinds(render(OVERLAYS["base"]), "ScaledObject").values()
    assert scaled["spec"]["triggers"] == base["spec"]["triggers"]


def test_environment_names_are_settings_the_services_read(rendered: list[Object]) -> None:
    """A misspelt variable is silently ignored by pydantic-settings; catch it here, for the
    ConfigMap's keys too (every service reads all of them)."""
    config_maps = kinds(rendered, "ConfigMap")
    for service, deployment in deployments(rendered).items():
        container = container_of(deployment)
        names = {var["name"] for var in container["env"]}
        for source in container.get("envFrom", []):
            names |= set(config_maps[source["configMapRef"]["name"]]["data"])
        unknown = names - settings_of(service)
        assert not unknown, f"{service} sets variables no settings class reads: {sorted(unknown)}"


def test_secrets_are_referenced_never_written(rendered: list[Object]) -> None:
    """Credentials live in a Secret the operator creates; none may be committed, and each
    service gets only the secrets it reads."""
    assert not kinds(rendered, "Secret")
    for service, deployment in deployments(rendered).items():
        container = container_of(deployment)
        referenced = set()
        for var in container["env"]:
            if var["name"] in SECRET_KEYS:
                assert "value" not in var, f"{service}: {var['name']} written in the manifest"
                ref = var["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == (SECRET, var["name"])
                referenced.add(var["name"])
        wanted = {"AMQP_URL", "DATABASE_URL"} & settings_of(service)
        if service == "gateway":
            wanted.add("RELAYFLOW_AUTH_SECRET")
        if service == "external":
            wanted.discard("DATABASE_URL")  # it uses no database
        assert referenced == wanted, service
        for source in container.get("envFrom", []):
            assert "secretRef" not in source, f"{service}: every key of a Secret, unchecked"
            assert source["configMapRef"]["name"] == CONFIG_MAP
    [auth] = kinds(rendered, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": SECRET, "key": "AMQP_URL"}
    ]


def named_port(container: Object, port: str | int) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def probes_of(container: Object) -> Iterator[tuple[str, Object]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        yield kind, container[kind]


def test_probes_ask_the_endpoints_the_services_serve(rendered: list[Object]) -> None:
    """Probes on a path or port nobody serves fail every pod; the port must be the one the
    settings make the service listen on, beyond loopback, on a path that needs no API key."""
    for service, deployment in deployments(rendered).items():
        container = container_of(deployment)
        env = env_values(container)
        if service == "gateway":
            listens = int(env["RELAYFLOW_GATEWAY_PORT"])
            assert env["RELAYFLOW_GATEWAY_HOST"] == "0.0.0.0"
            live, ready = "/healthz", "/readyz"
            assert {live, ready} <= PUBLIC_PATHS
            ready_takes = pages.READY_TIMEOUT
        else:
            listens = int(env["RELAYFLOW_METRICS_PORT"])
            assert env["RELAYFLOW_METRICS_HOST"] == "0.0.0.0"
            live, ready = probes.LIVE_PATH, probes.READY_PATH
            # /readyz waits for its check, after the loop got to it.
            ready_takes = probes.READY_TIMEOUT + probes.LIVE_TIMEOUT
        for kind, probe in probes_of(container):
            path = ready if kind == "readinessProbe" else live
            assert probe["httpGet"]["path"] == path, (service, kind)
            assert named_port(container, probe["httpGet"]["port"]) == listens, (service, kind)
        assert container["livenessProbe"]["timeoutSeconds"] > probes.LIVE_TIMEOUT
        assert container["readinessProbe"]["timeoutSeconds"] > ready_takes, service
        startup = container["startupProbe"]
        # The gateway answers only once its lifespan started, which may wait 30 s for each of
        # PostgreSQL and RabbitMQ (create_pool, connect); the others' loop answers meanwhile.
        patience = 60 if service == "gateway" else 20
        assert startup["periodSeconds"] * startup["failureThreshold"] >= patience, service


def test_services_select_their_pods_and_expose_the_ports_they_serve(
    rendered: list[Object],
) -> None:
    """A selector that matches no pod leaves a Service, budget or autoscaler silently empty."""
    pods = {
        service: (deployment["spec"]["template"]["metadata"]["labels"], container_of(deployment))
        for service, deployment in deployments(rendered).items()
    }
    for service, deployment in deployments(rendered).items():
        assert selects(deployment["spec"]["selector"]["matchLabels"], pods[service][0])
    for name, svc in kinds(rendered, "Service").items():
        selected = [
            s for s, (labels, _) in pods.items() if selects(svc["spec"]["selector"], labels)
        ]
        assert len(selected) == 1, name
        container = pods[selected[0]][1]
        for port in svc["spec"]["ports"]:
            assert named_port(container, port["targetPort"]), (name, port)
    gateway_ports = kinds(rendered, "Service")["relayflow-gateway"]["spec"]["ports"]
    assert [port["targetPort"] for port in gateway_ports] == ["http"]
    budgets = kinds(rendered, "PodDisruptionBudget")
    assert len(budgets) == len(pods)
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [s for s, (labels, _) in pods.items() if selects(selector, labels)]
        assert len(selected) == 1, name
        # One replica (dev) must stay drainable: a minAvailable of 1 would block the node.
        assert budget["spec"]["maxUnavailable"] == 1, name
        assert "minAvailable" not in budget["spec"], name
    [scaled] = kinds(rendered, "ScaledObject").values()
    target = scaled["spec"]["scaleTargetRef"]
    steps = deployments(rendered)["steps"]
    assert (target["kind"], target["name"]) == ("Deployment", steps["metadata"]["name"])
    # The autoscaler owns the step service's replicas; a fixed count would undo its scaling.
    assert "replicas" not in steps["spec"]


def test_the_autoscaler_watches_every_step_queue_the_step_service_consumes(
    rendered: list[Object],
) -> None:
    """A step whose queue is missing here never scales; a queue named wrongly (a renamed step,
    another RELAYFLOW_NAMESPACE) reads zero forever."""
    [config] = kinds(rendered, "ConfigMap").values()
    topology = Topology(namespace=config["data"]["RELAYFLOW_NAMESPACE"])
    served = StepRegistry.from_modules(StepServiceSettings().step_modules)
    [scaled] = kinds(rendered, "ScaledObject").values()
    queues = [trigger["metadata"]["queueName"] for trigger in scaled["spec"]["triggers"]]
    assert sorted(queues) == sorted(topology.step_queue(name) for name in served.names())
    names = [trigger["name"] for trigger in scaled["spec"]["triggers"]]
    assert len(set(names)) == len(names)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["authenticationRef"]["name"] in kinds(rendered, "TriggerAuthentication")


def _default(function: Callable[..., Any], parameter: str) -> float:
    value = inspect.signature(function).parameters[parameter].default
    assert isinstance(value, float | int)
    return float(value)


def shutdown_budget(service: str, deployment: Object) -> float:
    """The longest each service's stop on SIGTERM can take, from the code's own bounds (the
    comments beside terminationGracePeriodSeconds spell the same sums out)."""
    container = container_of(deployment)
    env = env_values(container)
    pool = _default(close_pool, "within")
    relay = _default(OutboxRelay.stop, "grace")
    grace = float(env.get("RELAYFLOW_SHUTDOWN_GRACE_SECONDS", "nan"))
    close = CLOSE_TIMEOUT
    if service == "gateway":
        pre_stop = float(container["lifecycle"]["preStop"]["sleep"]["seconds"])
        return pre_stop + GRACEFUL_SHUTDOWN + close + pool
    if service == "orchestrator":
        consumer = _default(BatchConsumer.stop, "grace")
        return close + consumer + ACKS_WAIT + 2 * relay + close + pool
    if service == "steps":
        # consumers, steps in flight, its channel and publisher; the relay and its publisher;
        # the connection and the pool.
        return close + grace + 2 * close + 2 * relay + close + close + pool
    # external: the consumer, the replies in flight, its channel, publisher and connection.
    return close + grace + 3 * close


def test_grace_periods_cover_each_services_shutdown(rendered: list[Object]) -> None:
    """Kubernetes kills a pod that outlives terminationGracePeriodSeconds: shorter than the
    service's own shutdown, in-flight work is cut off instead of finished or handed back."""
    for service, deployment in deployments(rendered).items():
        spec = deployment["spec"]["template"]["spec"]
        budget = shutdown_budget(service, deployment)
        assert not math.isnan(budget), f"{service}: set RELAYFLOW_SHUTDOWN_GRACE_SECONDS"
        period = spec["terminationGracePeriodSeconds"]
        assert budget + 3 <= period <= budget + 15, (service, budget, period)


def test_pods_run_non_root_read_only_and_bounded(rendered: list[Object]) -> None:
    """The image's user, no privilege, nothing writable but /tmp, service links off (they would
    set RELAYFLOW_*_PORT variables our settings read), and memory requested as measured."""
    final_user = [args for op, args in dockerfile_instructions() if op == "USER"][-1]
    user, _, group = final_user.partition(":")
    workdir = [args for op, args in dockerfile_instructions() if op == "WORKDIR"][-1]
    for service, deployment in deployments(rendered).items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["enableServiceLinks"] is False, service
        assert spec["automountServiceAccountToken"] is False, service
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == (user, group)
        container = container_of(deployment)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes[mounts[workdir]], f"{service}: {workdir} must be writable"
        resources = container["resources"]
        assert _mebibytes(resources["requests"]["memory"]) >= 64, service
        assert _mebibytes(resources["limits"]["memory"]) >= 2 * _mebibytes(
            resources["requests"]["memory"]
        )
        assert "cpu" in resources["requests"]


def _mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi"))
