"""deploy/Dockerfile (CPU) and deploy/Dockerfile.gpu: lint-clean, multi-stage, non-root, with
a healthcheck, and installing the torch that pyproject.toml pins."""

from __future__ import annotations

import re

import pytest

from .conftest import DOCKERFILES, REPO, final_stage, image_tools, pyproject, run_tool


def pinned(package: str) -> str:
    deps = pyproject()["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(rf"{package}\s*==", d)]
    return spec.split("==")[1].strip()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = run_tool("hadolint", "--no-color", str(DOCKERFILES[name]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_multi_stage_non_root_with_a_healthcheck(dockerfiles: dict, name: str) -> None:
    instructions = dockerfiles[name]
    assert sum(i.cmd.upper() == "FROM" for i in instructions) >= 2, "build and runtime stages"
    final = final_stage(instructions)
    users = [i.value[0] for i in final if i.cmd.upper() == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"runs as {users}"
    assert any(i.cmd.upper() == "HEALTHCHECK" for i in final)
    assert any(i.cmd.upper() == "CMD" for i in final)
    assert any(i.cmd.upper() == "COPY" and "--from=build" in i.flags for i in final)


def test_cpu_image_installs_the_pinned_torch_from_the_cpu_index(dockerfiles: dict) -> None:
    runs = " ".join(" ".join(i.value) for i in dockerfiles["cpu"] if i.cmd.upper() == "RUN")
    assert f"torch=={pinned('torch')}" in runs and f"torchvision=={pinned('torchvision')}" in runs
    assert "download.pytorch.org/whl/cpu" in runs


def test_gpu_image_checks_its_base_has_the_pinned_torch(dockerfiles: dict) -> None:
    text = DOCKERFILES["gpu"].read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert base.startswith(f"pytorch/pytorch:{pinned('torch')}-cuda") and base.endswith("-runtime")
    runs = " ".join(" ".join(i.value) for i in dockerfiles["gpu"] if i.cmd.upper() == "RUN")
    assert f"'{pinned('torch')}'" in runs and f"'{pinned('torchvision')}'" in runs


def test_dockerignore_sends_only_what_the_images_build_from() -> None:
    lines = set((REPO / ".dockerignore").read_text().split())
    assert {"*", "!pyproject.toml", "!services/", "!scripts/dev-secrets.sh"} <= lines
    assert not any(line.startswith("!scripts/") and line != "!scripts/dev-secrets.sh" for line in lines)


def test_cpu_image_installs_the_dev_secrets_script_and_checks_openssl(dockerfiles: dict) -> None:
    """docker-compose.yml's `secrets` service runs scripts/dev-secrets.sh in this image: the
    script must be on PATH, executable, and the openssl CLI it calls must be there (the build
    runs `openssl version` in the final stage, so a base image without it fails the build)."""
    final = final_stage(dockerfiles["cpu"])
    assert image_tools(dockerfiles["cpu"]) == {"memscore-dev-secrets": "scripts/dev-secrets.sh"}
    (copy,) = [i for i in final if i.cmd.upper() == "COPY" and "scripts/dev-secrets.sh" in i.value]
    assert "--chmod=755" in copy.flags
    assert (REPO / "scripts" / "dev-secrets.sh").is_file()
    runs = [" ".join(i.value) for i in final if i.cmd.upper() == "RUN"]
    assert any(re.search(r"(^|&&)\s*openssl version\b", run) for run in runs), runs
