"""docker-compose.yml: valid by the compose spec and by `docker-compose config` itself, and
wired the way docs/deploy.md says (healthy datastores first, bucket made, ports published, TLS
and tokens from the one-shot `secrets` service)."""

from __future__ import annotations

import re

import pytest

from .conftest import COMPOSE_FILE, DOCKERFILES, REPO, run_tool

MEMSCORE_SERVICES = ("gateway", "results", "worker", "worker-gpu")
SERVERS = ("gateway", "results")
# Where the `secrets` service writes and the servers read: the host directory and its mount.
SECRETS_DIR, SECRETS_MOUNT = "./.memscore-dev", "/secrets"


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
    # TLS is on: the check verifies the server's certificate with the development CA (the
    # certificate names 127.0.0.1), and Health needs no token.
    assert s["healthcheck"]["test"] == [
        "CMD", "memscore", "health", "--tls-ca", f"{SECRETS_MOUNT}/ca.pem", f"127.0.0.1:{port}"
    ]  # fmt: skip


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
            if name.startswith("./"):  # a bind mount: only the development credentials
                assert name == SECRETS_DIR, f"unexpected bind mount {name}"
                continue
            assert name in compose["volumes"], f"volume {name} is not declared"


def written_by_dev_secrets() -> set[str]:
    """The files scripts/dev-secrets.sh says it writes (its `mv X.tmp X` lines and the token)."""
    text = (REPO / "scripts" / "dev-secrets.sh").read_text()
    return set(re.findall(r"^\s*mv (\S+)\.tmp \1$", text, re.M))


@pytest.mark.parametrize("service", SERVERS)
def test_servers_require_tokens_and_serve_tls_from_the_secrets_service(compose: dict, service: str) -> None:
    s = compose["services"][service]
    env = s["environment"]
    assert "MEMSCORE_ALLOW_UNAUTHENTICATED" not in env
    assert f"{SECRETS_DIR}:{SECRETS_MOUNT}:ro" in s["volumes"]
    assert s["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    written = written_by_dev_secrets()
    assert {"ca.pem", "server.pem", "server.key", "token", "tokens"} <= written, written
    for var, name in (
        ("MEMSCORE_AUTH_TOKENS", "tokens"),
        ("MEMSCORE_TLS_CERT", "server.pem"),
        ("MEMSCORE_TLS_KEY", "server.key"),
    ):
        assert env[var] == f"{SECRETS_MOUNT}/{name}", (var, env.get(var))
    # No client CA: development clients authenticate with the token only.
    assert "MEMSCORE_TLS_CLIENT_CA" not in env


def test_only_the_servers_get_the_credentials(compose: dict) -> None:
    for name, s in compose["services"].items():
        mounts = [v for v in s.get("volumes", []) if v.startswith(SECRETS_DIR + ":")]
        has_tls = "MEMSCORE_TLS_CERT" in s.get("environment", {})
        if name in SERVERS:
            assert mounts and has_tls, name
        elif name != "secrets":
            assert not mounts and not has_tls, f"{name} needs no server credentials"


def test_secrets_service_runs_the_script_from_the_memscore_image_once(compose: dict) -> None:
    init = compose["services"]["secrets"]
    # The memscore image carries the script and openssl (test_dockerfiles): no other image to
    # pull, nothing installed at run time.
    assert init["image"] == compose["services"]["gateway"]["image"]
    assert init["build"]["dockerfile"] == "deploy/Dockerfile"
    assert init["restart"] == "no" and "healthcheck" not in init and "ports" not in init
    assert init["volumes"] == [f"{SECRETS_DIR}:{SECRETS_MOUNT}"]
    assert init["entrypoint"] == ["sh", "-c"]
    (script,) = init["command"]
    steps = [step.split() for step in script.split("&&")]
    assert steps[0] == ["memscore-dev-secrets", SECRETS_MOUNT]
    # Root in the container (Docker makes a missing bind-mount directory root's), then the key
    # goes to the servers' user, the uid the image runs as.
    assert init["user"] == "0:0"
    assert ["chown", "10001:10001", f"{SECRETS_MOUNT}/server.key"] in steps
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "USER 10001:10001" in text and "--uid 10001" in text


def test_dev_credentials_stay_out_of_git_and_images() -> None:
    name = SECRETS_DIR.removeprefix("./")
    assert f"{name}/" in (REPO / ".gitignore").read_text().split()
    assert f"{name}/" in (REPO / ".dockerignore").read_text().split()
