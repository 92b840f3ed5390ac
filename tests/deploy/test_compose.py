"""docker-compose.yml: valid by the compose spec and by `docker-compose config` itself, and
wired the way docs/deploy.md says (healthy datastores first, bucket made, ports published)."""

from __future__ import annotations

import pytest

from .conftest import COMPOSE_FILE, DOCKERFILES, REPO, run_tool

MEMSCORE_SERVICES = ("gateway", "results", "worker", "worker-gpu")


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_accepts_the_file(profile: str | None) -> None:
    """The compose CLI's own model: references, merges, interpolation and profiles."""
    args = ["-f", str(COMPOSE_FILE)] + (["--profile", profile] if profile else []) + ["config", "--quiet"]
    result = run_tool("docker-compose", *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_never_evicts_and_keeps_an_append_only_file(compose: dict) -> None:
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--maxmemory-policy noeviction" in command
    assert "--appendonly yes" in command
    assert "/data" in " ".join(compose["services"]["redis"]["volumes"])


def test_minio_is_checked_with_mc_and_its_bucket_is_created_once(compose: dict) -> None:
    services = compose["services"]
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init.get("entrypoint", []) + init["command"])
    bucket = services["gateway"]["environment"]["MEMSCORE_STORE"].removeprefix("s3://")
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert init["restart"] == "no"


@pytest.mark.parametrize("service", MEMSCORE_SERVICES)
def test_memscore_services_start_after_healthy_redis_and_the_bucket(compose: dict, service: str) -> None:
    s = compose["services"][service]
    assert s["depends_on"]["redis"]["condition"] == "service_healthy"
    assert s["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert s["healthcheck"]["test"], f"{service} has no healthcheck"
    assert s["restart"] == "unless-stopped"


@pytest.mark.parametrize(
    ("service", "port_var"), [("gateway", "MEMSCORE_GATEWAY_PORT"), ("results", "MEMSCORE_RESULTS_PORT")]
)
def test_grpc_ports_are_published_and_health_checked(compose: dict, service: str, port_var: str) -> None:
    """`memscore submit --gateway localhost:50051` from the host reaches the container."""
    s = compose["services"][service]
    port = s["environment"][port_var]
    assert f"{port}:{port}" in s["ports"]
    # TLS is on: the check verifies the server's certificate with the development CA (its
    # certificate names 127.0.0.1), and Health needs no token
    assert s["healthcheck"]["test"] == ["CMD", "memscore", "health", f"127.0.0.1:{port}", "--tls-ca", "/secrets/ca.pem"]


def test_gpu_worker_reserves_an_nvidia_gpu_in_the_gpu_profile(compose: dict) -> None:
    s = compose["services"]["worker-gpu"]
    assert s["profiles"] == ["gpu"]
    (device,) = s["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert s["environment"]["MEMSCORE_DEVICE"] == "cuda"
    assert s["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    cpu = compose["services"]["worker"]
    assert "profiles" not in cpu and cpu["environment"]["MEMSCORE_DEVICE"] == "cpu"


def test_builds_use_the_repository_dockerfiles_and_named_volumes_exist(compose: dict) -> None:
    built = {s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s}
    assert built == {str(p.relative_to(REPO)) for p in DOCKERFILES.values()}
    for s in compose["services"].values():
        assert s.get("build", {}).get("context", ".") == "."
        for volume in s.get("volumes", []):
            name = volume.split(":")[0]
            if name.startswith("./"):  # a bind mount of the repository's own files
                assert name in ("./scripts", "./.memscore-dev"), f"unexpected bind mount {name}"
                continue
            assert name in compose["volumes"], f"volume {name} is not declared"


@pytest.mark.parametrize("service", ["gateway", "results"])
def test_servers_require_tokens_and_serve_tls_from_the_secrets_service(compose: dict, service: str) -> None:
    s = compose["services"][service]
    env = s["environment"]
    assert (env["MEMSCORE_AUTH_TOKENS"], env["MEMSCORE_TLS_CERT"], env["MEMSCORE_TLS_KEY"]) == (
        "/secrets/tokens",
        "/secrets/server.pem",
        "/secrets/server.key",
    )
    assert "MEMSCORE_ALLOW_UNAUTHENTICATED" not in env
    assert "./.memscore-dev:/secrets:ro" in s["volumes"]
    assert s["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    init = compose["services"]["secrets"]
    assert "sh /scripts/dev-secrets.sh /secrets" in init["command"][0] and init["restart"] == "no"
    assert "./.memscore-dev:/secrets" in init["volumes"]
