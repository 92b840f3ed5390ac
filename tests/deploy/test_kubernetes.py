"""k8s/: every overlay renders with kustomize and validates against the Kubernetes schemas,
and the properties the design relies on hold in what would be applied."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from memscore.settings import ENV_VARS

from .conftest import OVERLAYS, Render, containers, pod_spec, run_tool

# Kinds without a schema in kubernetes-validate (CRDs); their fields are checked below.
CRD_API_GROUPS = ("keda.sh/",)


def setting(render: Render, name: str) -> str:
    return render.config().get(name, ENV_VARS[name][0])


def container(render: Render, deployment: str) -> dict:
    return pod_spec(render.get("Deployment", deployment))["containers"][0]


def env_of(c: dict, render: Render) -> dict[str, str]:
    """The container's literal environment: the ConfigMap, then its own `env` values."""
    env = dict(render.config()) if any("configMapRef" in s for s in c.get("envFrom", [])) else {}
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(renders: dict[str, Render], overlay: str) -> None:
    render = renders[overlay]
    result = run_tool("kubernetes-validate", "--strict", "--quiet", str(render.path))
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"kubernetes-validate --strict {overlay}:\n{report}"
    unvalidated = [
        line for line in report.splitlines() if line.startswith("WARN") and not any(g in line for g in CRD_API_GROUPS)
    ]
    assert not unvalidated, "objects with no schema other than known CRDs:\n" + "\n".join(unvalidated)


def test_prod_renders_the_services_without_in_cluster_datastores_or_secret(renders: dict[str, Render]) -> None:
    prod = renders["overlays/prod"]
    names = {(o["kind"], o["metadata"]["name"]) for o in prod.objects}
    for expected in [
        ("Namespace", "memscore"),
        ("Deployment", "memscore-gateway"),
        ("Deployment", "memscore-results"),
        ("Deployment", "memscore-worker"),
        ("Service", "memscore-gateway"),
        ("Service", "memscore-results"),
    ]:
        assert expected in names
    assert not prod.of_kind("StatefulSet"), "prod uses external Redis and S3"
    # The real Secret is created out of band; applying must not overwrite it with placeholders.
    assert not prod.of_kind("Secret")
    assert "CHANGE-ME" not in prod.path.read_text()
    for image in (c["image"] for w in prod.workloads() for c in containers(w)):
        assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", image), f"prod image {image} must name a registry and tag"


def test_dev_runs_redis_and_minio_in_cluster_with_a_bucket_job(renders: dict[str, Render]) -> None:
    dev = renders["overlays/dev"]
    redis = pod_spec(dev.get("StatefulSet", "redis"))["containers"][0]
    args = " ".join(redis["args"])
    assert "--maxmemory-policy noeviction" in args and "--appendonly yes" in args
    minio = pod_spec(dev.get("StatefulSet", "minio"))["containers"][0]
    assert minio["readinessProbe"]["exec"]["command"] == ["mc", "ready", "local"]
    job = pod_spec(dev.get("Job", "minio-init"))["containers"][0]
    bucket = urlparse(dev.config()["MEMSCORE_STORE"]).netloc
    assert f"mc mb --ignore-existing local/{bucket}" in " ".join(job["command"])
    for name, port in (("redis", 6379), ("minio", 9000)):
        assert dev.get("Service", name)["spec"]["ports"][0]["port"] == port
    host = dev.config()["MEMSCORE_S3_ENDPOINT"].split(":")[0]
    assert host == "minio"
    secret = dev.get("Secret", "memscore-credentials")["stringData"]
    assert urlparse(secret["MEMSCORE_BROKER_URL"]).hostname == "redis"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_lands_in_the_memscore_namespace(renders: dict[str, Render], overlay: str) -> None:
    render = renders[overlay]
    assert [o["metadata"]["name"] for o in render.of_kind("Namespace")] == ["memscore"]
    stray = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in render.objects
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != "memscore"
    ]
    assert not stray, f"objects outside the namespace: {stray}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_have_native_grpc_probes_on_numeric_ports(renders: dict[str, Render], overlay: str) -> None:
    render = renders[overlay]
    for service, setting_name in (("gateway", "MEMSCORE_GATEWAY_PORT"), ("results", "MEMSCORE_RESULTS_PORT")):
        port = int(setting(render, setting_name))
        c = container(render, f"memscore-{service}")
        assert c["command"] == [f"memscore-{service}"]
        assert [p["containerPort"] for p in c["ports"]] == [port]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = c[probe]["grpc"]
            assert type(grpc["port"]) is int and grpc["port"] == port, f"{service} {probe}: {grpc}"
        svc = render.get("Service", f"memscore-{service}")["spec"]["ports"][0]
        assert svc["port"] == port and svc["targetPort"] == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_all_probe_ports_are_numbers(renders: dict[str, Render], overlay: str) -> None:
    for w in renders[overlay].workloads():
        for c in containers(w):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in c.get(probe, {}):
                        port = c[probe][handler]["port"]
                        assert type(port) is int, f"{w['metadata']['name']}/{c['name']} {probe}: port {port!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_device_matches_its_resources(renders: dict[str, Render], overlay: str) -> None:
    """A cuda worker has a GPU under limits (the only place Kubernetes takes it), the GPU
    image, a toleration and a node selector; a cpu worker (dev) has none of them."""
    render = renders[overlay]
    worker = render.get("Deployment", "memscore-worker")
    spec, c = pod_spec(worker), container(render, "memscore-worker")
    assert c["command"] == ["memscore-worker"]
    device = env_of(c, render)["MEMSCORE_DEVICE"]
    resources = c["resources"]
    assert "nvidia.com/gpu" not in resources.get("requests", {}), "GPUs go under limits only"
    if device.startswith("cuda"):
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert "memscore-gpu" in c["image"]
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        assert spec["nodeSelector"]
    else:
        assert device == "cpu" and overlay == "overlays/dev"
        assert "nvidia.com/gpu" not in resources.get("limits", {})
        assert "memscore-gpu" not in c["image"]


def test_prod_workers_get_gpus(renders: dict[str, Render]) -> None:
    c = container(renders["overlays/prod"], "memscore-worker")
    assert env_of(c, renders["overlays/prod"])["MEMSCORE_DEVICE"] == "cuda"
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_period_outlasts_a_shard(renders: dict[str, Render], overlay: str) -> None:
    """SIGTERM lets Celery finish the shard in hand; the pod must not be killed before the
    shard's hard time limit, as the worker's own Celery app computes it from the config."""
    from memscore.broker import make_app
    from memscore.settings import Settings

    render = renders[overlay]
    grace = pod_spec(render.get("Deployment", "memscore-worker"))["terminationGracePeriodSeconds"]
    shard_timeout = int(setting(render, "MEMSCORE_SHARD_TIMEOUT_S"))
    hard_limit = make_app(Settings(shard_timeout_s=shard_timeout)).conf.task_time_limit or shard_timeout
    assert grace >= max(shard_timeout, hard_limit), (grace, shard_timeout, hard_limit)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_memory_limits(renders: dict[str, Render], overlay: str) -> None:
    for w in renders[overlay].workloads():
        for c in containers(w):
            where = f"{overlay} {w['kind']}/{w['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memscore_pods_run_as_non_root(renders: dict[str, Render], overlay: str) -> None:
    for w in renders[overlay].workloads():
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        for c in containers(w):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_has_a_disruption_budget_matching_its_pods(renders: dict[str, Render], overlay: str) -> None:
    render = renders[overlay]
    for name in ("memscore-gateway", "memscore-results", "memscore-worker"):
        labels = render.get("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        pdb = render.get("PodDisruptionBudget", name)["spec"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        # maxUnavailable, not minAvailable: a single replica (dev) must not block drains.
        assert pdb["maxUnavailable"] == 1


def _selects(selector: dict, labels: dict) -> bool:
    if not selector:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", "only In is understood here"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_only_the_grpc_services(
    renders: dict[str, Render], overlay: str
) -> None:
    render = renders[overlay]
    policies = render.of_kind("NetworkPolicy")
    deny = [
        p["spec"]
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny policy"
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in render.workloads()}
    open_to_anyone = set()
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if not rule.get("from"):
                open_to_anyone |= {name for name, labels in pods.items() if _selects(p["spec"]["podSelector"], labels)}
            else:
                assert all("ipBlock" not in peer for peer in rule["from"]), p["metadata"]["name"]
    assert open_to_anyone == {"memscore-gateway", "memscore-results"}
    # Workers accept no connections at all; they only reach out to Redis and S3.
    worker = pods["memscore-worker"]
    assert not [p for p in policies if p["spec"].get("ingress") and _selects(p["spec"]["podSelector"], worker)]
    worker_ports = {
        port["port"]
        for p in policies
        if _selects(p["spec"]["podSelector"], worker)
        for rule in p["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }
    assert {6379, 9000} <= worker_ports


def test_dev_datastores_accept_only_memscore_pods(renders: dict[str, Render]) -> None:
    dev = renders["overlays/dev"]
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in dev.workloads()}
    for store in ("redis", "minio"):
        allowed = set()
        for p in dev.of_kind("NetworkPolicy"):
            if _selects(p["spec"]["podSelector"], pods[store]):
                for rule in p["spec"].get("ingress", []):
                    for peer in rule["from"]:
                        allowed |= {n for n, labels in pods.items() if _selects(peer["podSelector"], labels)}
        assert (
            {"memscore-gateway", "memscore-results", "memscore-worker"}
            <= allowed
            <= {"memscore-gateway", "memscore-results", "memscore-worker", "minio-init"}
        ), (store, allowed)


def test_keda_scales_workers_on_the_celery_queue_and_never_to_zero(renders: dict[str, Render]) -> None:
    prod = renders["overlays/prod"]
    (scaled,) = prod.of_kind("ScaledObject")
    spec = scaled["spec"]
    prod.get("Deployment", spec["scaleTargetRef"]["name"])
    # KEDA counts waiting messages only: at 0 replicas a job whose last shards run looks idle.
    assert spec["minReplicaCount"] >= 1 and spec["maxReplicaCount"] > spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == setting(prod, "MEMSCORE_QUEUE")
    # The list lives in the broker's database (the path of MEMSCORE_BROKER_URL).
    template = renders["base"].get("Secret", "memscore-credentials")["stringData"]
    assert trigger["metadata"]["databaseIndex"] == urlparse(template["MEMSCORE_BROKER_URL"]).path.strip("/")
    auth = prod.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "memscore-credentials" and ref["key"] in template
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} >= {"address", "password"}


def test_hpa_alternative_targets_the_workers_and_never_zero(renders: dict[str, Render]) -> None:
    render = renders["base+components/hpa"]
    (hpa,) = render.of_kind("HorizontalPodAutoscaler")
    render.get("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert hpa["spec"]["minReplicas"] >= 1
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["selector"]["matchLabels"]["key"] == setting(render, "MEMSCORE_QUEUE")
    assert not render.of_kind("ScaledObject")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_referenced_secret_keys_exist_in_the_template(renders: dict[str, Render], overlay: str) -> None:
    """prod's Secret is made by hand from the template's keys: every key used must be there."""
    template = renders["base"].get("Secret", "memscore-credentials")["stringData"]
    for w in renders[overlay].workloads():
        for c in containers(w):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "memscore-credentials" and ref["key"] in template, e
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == "memscore-credentials"
