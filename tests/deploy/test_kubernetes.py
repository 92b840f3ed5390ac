"""k8s/: every overlay renders with kustomize and validates against the Kubernetes schemas,
and the properties the design relies on hold in what would be applied."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from memscore.settings import ENV_VARS

from .conftest import K8S, OVERLAYS, REPO, Render, containers, pod_spec, run_tool

# Kinds without a schema in kubernetes-validate (CRDs); their fields are checked below.
CRD_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


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


def mounts_of(render: Render, deployment: str) -> dict[str, tuple[dict, dict]]:
    """Secret volumes of the deployment's first container, by Secret name: (volume, mount)."""
    spec = pod_spec(render.get("Deployment", deployment))
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    found = {}
    for m in spec["containers"][0].get("volumeMounts", []):
        secret = volumes[m["name"]].get("secret")
        if secret:
            found[secret["secretName"]] = (secret, m)
    return found


def health_args(argv: list[str]):
    from memscore.cli import build_parser

    assert argv[:2] == ["memscore", "health"], argv
    return build_parser().parse_args(argv[1:])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_probe_health_over_tls_with_the_secrets_ca(renders: dict[str, Render], overlay: str) -> None:
    """Kubernetes' grpc probe cannot speak TLS: each probe runs `memscore health` in the pod,
    verifying the certificate with ca.crt of the mounted memscore-tls under the Service's DNS
    name, on the port the ConfigMap sets."""
    render = renders[overlay]
    for service, setting_name in (("gateway", "MEMSCORE_GATEWAY_PORT"), ("results", "MEMSCORE_RESULTS_PORT")):
        port = int(setting(render, setting_name))
        name = f"memscore-{service}"
        c = container(render, name)
        assert c["command"] == [name]
        assert [p["containerPort"] for p in c["ports"] if p["name"] == "grpc"] == [port]
        _, tls_mount = mounts_of(render, name)["memscore-tls"]
        svc = render.get("Service", name)
        dns = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in c[probe], f"{service} {probe}: a grpc probe fails against TLS"
            args = health_args(c[probe]["exec"]["command"])
            assert args.target == f"127.0.0.1:{port}", (service, probe, args)
            assert args.tls_ca == f"{tls_mount['mountPath']}/ca.crt", (service, probe, args)
            assert args.tls_server_name == dns, (service, probe, args)
            # A Python process per probe: give it more than the 1 s default.
            assert c[probe]["timeoutSeconds"] > args.timeout, (service, probe)
        ports = svc["spec"]["ports"][0]
        assert ports["port"] == port and ports["targetPort"] == port
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{overlay}: {name} must not be exposed itself"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_mount_the_tls_and_auth_secrets_and_require_tokens(renders: dict[str, Render], overlay: str) -> None:
    """memscore-tls (the kubernetes.io/tls shape plus ca.crt, as cert-manager writes it) and
    memscore-auth (the token file) are mounted whole into gateway and results, and the servers'
    variables name the mounted files; nothing lets them run without tokens."""
    render = renders[overlay]
    for name in ("memscore-gateway", "memscore-results"):
        mounts = mounts_of(render, name)
        assert {"memscore-tls", "memscore-auth"} <= set(mounts), f"{overlay} {name}: {sorted(mounts)}"
        env = env_of(container(render, name), render)
        expected = {
            "memscore-tls": {"tls.crt": "MEMSCORE_TLS_CERT", "tls.key": "MEMSCORE_TLS_KEY", "ca.crt": None},
            "memscore-auth": {"tokens": "MEMSCORE_AUTH_TOKENS"},
        }
        for secret_name, keys in expected.items():
            secret, mount = mounts[secret_name]
            # Explicit keys: a Secret without one fails the mount, naming the key.
            assert {i["key"]: i["path"] for i in secret["items"]} == {k: k for k in keys}, secret
            assert not secret.get("optional"), secret
            # subPath mounts never see a renewed Secret; the servers re-read changed files.
            assert mount.get("readOnly") is True and "subPath" not in mount, mount
            # Readable by the pod's group only (fsGroup), not by everyone.
            assert secret["defaultMode"] & 0o007 == 0 and secret["defaultMode"] & 0o040, oct(secret["defaultMode"])
            for key, var in keys.items():
                if var:
                    assert env[var] == f"{mount['mountPath']}/{key}", (name, var, env.get(var))
        assert env.get("MEMSCORE_ALLOW_UNAUTHENTICATED", "false") == "false", f"{overlay} {name}"
        assert "MEMSCORE_TLS_CLIENT_CA" not in env, "clients authenticate with tokens"
    # The workers serve nothing: they get neither Secret.
    assert not {"memscore-tls", "memscore-auth"} & set(mounts_of(render, "memscore-worker"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_renders_the_tls_or_token_secrets(renders: dict[str, Render], overlay: str) -> None:
    """They are created out of band (docs/deploy.md, "TLS and tokens"): no private key or
    token file in the repository, and `kubectl apply -k` never overwrites them."""
    names = {o["metadata"]["name"] for o in renders[overlay].of_kind("Secret")}
    assert not {"memscore-tls", "memscore-auth"} & names
    assert "PRIVATE KEY" not in renders[overlay].path.read_text()


def grpc_services() -> dict[str, str]:
    """Full names of the API's gRPC services, from the protos: {"ScoringService": "memscore.v1.ScoringService"}."""
    found = {}
    for proto in sorted((REPO / "protos").rglob("*.proto")):
        text = proto.read_text()
        package = re.search(r"^package\s+([\w.]+);", text, re.M)
        for service in re.findall(r"^service\s+(\w+)", text, re.M):
            found[service] = f"{package.group(1)}.{service}"
    return found


def test_prod_exposes_one_tls_ingress_routing_each_service_by_its_path(renders: dict[str, Render]) -> None:
    prod = renders["overlays/prod"]
    exposed = [
        s["metadata"]["name"] for s in prod.of_kind("Service") if s["spec"].get("type", "ClusterIP") != "ClusterIP"
    ]
    assert not exposed, f"only the Ingress is exposed, not {exposed}"
    (ingress,) = prod.of_kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    notes = ingress["metadata"]["annotations"]
    # TLS again to the pods: the servers serve nothing else.
    assert notes["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    # nginx's 1 MiB default body limit would refuse uploads the gateway accepts.
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    (rule,) = ingress["spec"]["rules"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] == "memscore-tls" and tls["hosts"] == [rule["host"]]
    routes = {}
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        svc = prod.get("Service", backend["name"])
        assert backend["port"]["number"] == svc["spec"]["ports"][0]["port"], path
        # ingress-nginx's strict validation refuses dots in Prefix paths.
        assert path["pathType"] == "ImplementationSpecific" or "." not in path["path"], path
        assert path["path"].startswith("/") and path["path"].endswith("/"), "a whole /SERVICE/ segment"
        routes[path["path"].strip("/")] = backend["name"]
    services = grpc_services()
    assert routes[services["ScoringService"]] == "memscore-gateway"
    assert routes[services["ResultsService"]] == "memscore-results"
    assert set(routes) - {services["ScoringService"], services["ResultsService"]} <= {"grpc.health.v1.Health"}


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


# Who may connect to the servers: the ingress controller's namespace (any of its pods), and pods
# of memscore's namespace labelled as clients.
INGRESS_CONTROLLER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
CLIENT_LABELS = {"app.kubernetes.io/name": "memscore", "app.kubernetes.io/component": "client"}
IN_NAMESPACE_CLIENTS = {"podSelector": {"matchLabels": CLIENT_LABELS}}
# Who may scrape the metrics port: Prometheus's namespace (docs/deploy.md, "Metrics").
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def ingress_rules(render: Render, labels: dict) -> list[dict]:
    """The ingress rules of every NetworkPolicy that selects pods with these labels."""
    return [
        rule
        for p in render.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("ingress", [])
    ]


def egress_rules(render: Render, labels: dict) -> list[dict]:
    return [
        rule
        for p in render.of_kind("NetworkPolicy")
        if "Egress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("egress", [])
    ]


def pod_labels(render: Render) -> dict[str, dict]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in render.workloads()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_admit_only_the_ingress_controller_and_clients(
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
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            assert rule.get("from"), f"{p['metadata']['name']}: a rule without `from` admits anyone"
            assert all("ipBlock" not in peer for peer in rule["from"]), p["metadata"]["name"]
    pods = pod_labels(render)
    metrics_port = int(setting(render, "MEMSCORE_METRICS_PORT"))

    def scrapes(rule: dict) -> bool:
        return rule["ports"] == [{"protocol": "TCP", "port": metrics_port}]

    for service, setting_name in (("gateway", "MEMSCORE_GATEWAY_PORT"), ("results", "MEMSCORE_RESULTS_PORT")):
        port = int(setting(render, setting_name))
        rules = [r for r in ingress_rules(render, pods[f"memscore-{service}"]) if not scrapes(r)]
        peers = [peer for rule in rules for peer in rule["from"]]
        assert sorted(peers, key=str) == sorted([INGRESS_CONTROLLER, IN_NAMESPACE_CLIENTS], key=str), peers
        assert all(rule["ports"] == [{"protocol": "TCP", "port": port}] for rule in rules), rules
    # None of memscore's own pods is a client: nothing in the namespace reaches the servers.
    assert not [name for name, labels in pods.items() if CLIENT_LABELS.items() <= labels.items()]
    # A client pod may reach both servers (the egress half), on their ports only.
    reach = {
        name
        for rule in egress_rules(render, CLIENT_LABELS)
        for peer in rule.get("to", [])
        for name, labels in pods.items()
        if "namespaceSelector" not in peer and _selects(peer["podSelector"], labels)
    }
    assert reach == {"memscore-gateway", "memscore-results"}, reach
    # Prometheus's namespace, and nothing else, may scrape the metrics port of every memscore pod.
    for name in ("memscore-gateway", "memscore-results", "memscore-worker"):
        peers = [peer for rule in ingress_rules(render, pods[name]) if scrapes(rule) for peer in rule["from"]]
        assert peers == [MONITORING], (name, peers)
    # Workers accept no other connection; they only reach out to Redis and S3.
    worker = pods["memscore-worker"]
    assert all(scrapes(rule) for rule in ingress_rules(render, worker))
    worker_ports = {port["port"] for rule in egress_rules(render, worker) for port in rule.get("ports", [])}
    assert {6379, 9000} <= worker_ports
    # Only the servers and the dev datastores accept anything.
    accepting = {name for name, labels in pods.items() if [r for r in ingress_rules(render, labels) if not scrapes(r)]}
    assert accepting <= {"memscore-gateway", "memscore-results", "redis", "minio"}, accepting


def test_dev_datastores_accept_only_the_memscore_pods_that_use_them(renders: dict[str, Render]) -> None:
    dev = renders["overlays/dev"]
    pods = pod_labels(dev)
    expected = {
        "redis": ({"memscore-gateway", "memscore-results", "memscore-worker"}, 6379),
        # minio-init makes the bucket
        "minio": ({"memscore-gateway", "memscore-results", "memscore-worker", "minio-init"}, 9000),
    }
    for store, (users, port) in expected.items():
        allowed = set()
        for rule in ingress_rules(dev, pods[store]):
            assert rule["ports"] == [{"protocol": "TCP", "port": port}], rule
            for peer in rule["from"]:
                assert "namespaceSelector" not in peer, f"{store}: from another namespace: {peer}"
                allowed |= {n for n, labels in pods.items() if _selects(peer["podSelector"], labels)}
        assert allowed == users, (store, allowed)


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


def test_every_component_is_rendered_by_an_overlay_or_on_its_own() -> None:
    """So each one renders and validates (test_overlay_renders_and_validates_strictly)."""
    used = {name.split("+")[1] for name in OVERLAYS if "+" in name}
    for overlay in ("overlays/dev", "overlays/prod"):
        text = (K8S / overlay / "kustomization.yaml").read_text()
        used |= {f"components/{c}" for c in re.findall(r"\.\./\.\./components/([\w-]+)", text)}
    components = {f"components/{d.name}" for d in (K8S / "components").iterdir() if d.is_dir()}
    assert components <= used, f"components rendered nowhere: {sorted(components - used)}"


MEMSCORE_PROCESSES = ("memscore-gateway", "memscore-results", "memscore-worker")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_memscore_process_serves_metrics_where_its_annotations_and_service_say(
    renders: dict[str, Render], overlay: str
) -> None:
    render = renders[overlay]
    port = int(setting(render, "MEMSCORE_METRICS_PORT"))
    assert port, f"{overlay}: MEMSCORE_METRICS_PORT is 0: no process serves /metrics"
    for w in render.workloads():
        for c in containers(w):
            metrics = [p for p in c.get("ports", []) if p.get("name") == "metrics"]
            if not metrics:
                continue
            where = f"{overlay} {w['metadata']['name']}/{c['name']}"
            assert metrics[0]["containerPort"] == port == int(env_of(c, render)["MEMSCORE_METRICS_PORT"]), where
            notes = w["spec"]["template"]["metadata"].get("annotations", {})
            assert notes.get("prometheus.io/scrape") == "true", where
            assert notes.get("prometheus.io/port") == str(port), where
            assert notes.get("prometheus.io/path") == "/metrics", where
    for name in MEMSCORE_PROCESSES:
        c = container(render, name)
        assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port], name
        svc = render.get("Service", name)
        assert _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(render)[name]), name
        (svc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == "metrics"]
        assert svc_port["targetPort"] in ("metrics", port) and svc_port["port"] == port, (name, svc_port)


def test_servicemonitor_scrapes_the_metrics_port_of_each_memscore_service(renders: dict[str, Render]) -> None:
    """kubernetes-validate has no schema for the Operator's CRD: its fields are checked here."""
    render = renders["base+components/servicemonitor"]
    (monitor,) = render.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "memscore"
    spec = monitor["spec"]
    selected = {
        s["metadata"]["name"] for s in render.of_kind("Service") if _selects(spec["selector"], s["metadata"]["labels"])
    }
    assert selected == set(MEMSCORE_PROCESSES), selected
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, endpoint
    for name in selected:
        assert "metrics" in {p["name"] for p in render.get("Service", name)["spec"]["ports"]}, name
    assert not renders["base"].of_kind("ServiceMonitor"), "the ServiceMonitor is optional (needs the CRDs)"
