"""Everything the deploy files run in a memscore image is a real entry point of the package
(or a tool the image's Dockerfile installs), and every MEMSCORE_* variable they set is a
setting the code reads (settings.ENV_VARS).

The allowed commands are derived at test time: the console scripts in pyproject.toml, the
subcommands of `memscore`'s own argument parser (each `memscore ...` line is parsed by it,
flags included) and the files the CPU Dockerfile copies onto PATH, so a command added or
removed in the code is seen here at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import pytest

from memscore.settings import ENV_VARS

from .conftest import (
    Render,
    containers,
    expand_shell,
    final_stage,
    image_tools,
    pyproject,
    shell_commands,
)

# The Celery app module that `celery -A` must name (the worker healthcheck).
CELERY_APP = "memscore.worker.app"
# What a one-shot init service (compose `secrets`) may run besides our tools: handing files to
# the servers' user.
INIT_COMMANDS = ("chown", "chmod")


@dataclass
class Invocation:
    where: str
    # "main" (a service's process), "init" (a one-shot service's), "health" (a check) or
    # "build" (RUN)
    role: str
    argv: list[str]


def is_memscore_image(image: str) -> bool:
    """memscore:dev, memscore-gpu:0.1.0, registry.example.com/memscore/memscore-gpu:0.1.0."""
    return image.rsplit("/", 1)[-1].split(":")[0] in ("memscore", "memscore-gpu")


def compose_invocations(compose: dict) -> Iterator[Invocation]:
    for name, s in compose["services"].items():
        if not is_memscore_image(s.get("image", "")):
            continue
        if "command" in s or "entrypoint" in s:
            role = "init" if s.get("restart") == "no" else "main"
            yield Invocation(
                f"compose {name} command", role, list(s.get("entrypoint", [])) + list(s.get("command", []))
            )
        test = s.get("healthcheck", {}).get("test")
        if test:
            kind, *rest = test
            argv = rest if kind == "CMD" else ["sh", "-c", rest[0].replace("$$", "$")]
            yield Invocation(f"compose {name} healthcheck", "health", argv)


def dockerfile_invocations(dockerfiles: dict) -> Iterator[Invocation]:
    for name, instructions in dockerfiles.items():
        for ins in final_stage(instructions):
            cmd = ins.cmd.upper()
            if cmd in ("CMD", "ENTRYPOINT"):
                argv = list(ins.value) if ins.json else ["sh", "-c", ins.value[0]]
                yield Invocation(f"Dockerfile[{name}] {cmd}", "main", argv)
            elif cmd == "HEALTHCHECK" and ins.value[0] == "CMD":
                argv = list(ins.value[1:]) if ins.json or len(ins.value) > 2 else ["sh", "-c", ins.value[1]]
                yield Invocation(f"Dockerfile[{name}] HEALTHCHECK", "health", argv)
        # Build-time smoke runs of our own commands (`RUN ... && memscore --help`).
        for ins in instructions:
            if ins.cmd.upper() == "RUN":
                for argv in shell_commands(ins.value[0]):
                    if argv[0].startswith("memscore"):
                        yield Invocation(f"Dockerfile[{name}] RUN", "build", argv)


def k8s_invocations(renders: dict[str, Render]) -> Iterator[Invocation]:
    for overlay, render in renders.items():
        for w in render.workloads():
            for c in containers(w):
                if not is_memscore_image(c["image"].split("@")[0]):
                    continue
                where = f"k8s {overlay} {w['kind']}/{w['metadata']['name']}/{c['name']}"
                assert "command" in c, f"{where}: say which service runs (the image's CMD is the gateway)"
                yield Invocation(where, "main", c["command"] + c.get("args", []))
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if "exec" in c.get(probe, {}):
                        yield Invocation(f"{where} {probe}", "health", c[probe]["exec"]["command"])


@pytest.fixture(scope="session")
def invocations(compose: dict, dockerfiles: dict, renders: dict[str, Render]) -> list[Invocation]:
    found = [*compose_invocations(compose), *dockerfile_invocations(dockerfiles), *k8s_invocations(renders)]
    # Guard against a collector that silently finds nothing.
    assert len(found) >= 10, found
    return found


def memscore_problem(argv: list[str]) -> str | None:
    """None if `memscore ARGS` parses with the CLI's parser as it is now, else why not."""
    import contextlib
    import io

    from memscore.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv[1:])
    except SystemExit as e:
        if e.code not in (0, None):
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def test_commands_run_in_memscore_images_are_package_entry_points(
    invocations: list[Invocation], dockerfiles: dict
) -> None:
    scripts = set(pyproject()["project"]["scripts"])
    tools = image_tools(dockerfiles["cpu"])
    problems = []
    for inv in invocations:
        for argv in expand_shell(inv.argv):
            program = argv[0]
            if inv.role == "init" and (program in tools or program in INIT_COMMANDS):
                continue
            if program == "memscore":
                why = memscore_problem(argv)
                if why:
                    problems.append(f"{inv.where}: `{' '.join(argv)}`: {why}")
            elif program in scripts:
                # Services are configured by environment variables only.
                if argv[1:]:
                    problems.append(f"{inv.where}: `{' '.join(argv)}`: {program} takes no arguments here")
            elif program == "celery":
                if argv[1:3] != ["-A", CELERY_APP] or argv[3:5] != ["inspect", "ping"]:
                    problems.append(
                        f"{inv.where}: `{' '.join(argv)}`: only `celery -A {CELERY_APP} inspect ping` is used"
                    )
            else:
                problems.append(
                    f"{inv.where}: `{' '.join(argv)}`: {program} is not a memscore entry point "
                    f"(console scripts: {sorted(scripts)})"
                )
    assert not problems, "\n".join(problems)


def test_services_run_their_own_console_script(invocations: list[Invocation]) -> None:
    """Each service's main process is its console script: gateway, results and worker."""
    mains = {inv.argv[0] for inv in invocations if inv.role == "main"}
    assert mains == {"memscore-gateway", "memscore-results", "memscore-worker"}


def test_compose_init_runs_the_dev_secrets_script_the_image_installs(
    invocations: list[Invocation], dockerfiles: dict
) -> None:
    tools = image_tools(dockerfiles["cpu"])
    assert tools.get("memscore-dev-secrets") == "scripts/dev-secrets.sh"
    (init,) = [inv for inv in invocations if inv.role == "init"]
    assert expand_shell(init.argv)[0] == ["memscore-dev-secrets", "/secrets"]


def health_args(argv: list[str]):
    from memscore.cli import build_parser

    return build_parser().parse_args(argv[1:])


def test_health_checks_target_the_services_ports_over_tls(invocations: list[Invocation]) -> None:
    """Compose and k8s check the servers with TLS (they serve nothing else); only the image's
    own default HEALTHCHECK, for a container run without credentials, is plaintext."""
    ports = {ENV_VARS["MEMSCORE_GATEWAY_PORT"][0], ENV_VARS["MEMSCORE_RESULTS_PORT"][0]}
    health = [
        (inv.where, health_args(argv))
        for inv in invocations
        for argv in expand_shell(inv.argv)
        if argv[:2] == ["memscore", "health"]
    ]
    assert len(health) >= 8, health  # compose 2, k8s 3 probes x 2 servers x overlays, Dockerfile 1
    for where, args in health:
        assert re.fullmatch(r"127\.0\.0\.1:(\d+)", args.target).group(1) in ports, (where, args)
        if not where.startswith("Dockerfile"):
            assert args.tls_ca, f"{where}: the servers speak TLS only; pass --tls-ca"


# ---- environment variables ----------------------------------------------------------------


def compose_env(compose: dict) -> Iterator[tuple[str, str, str]]:
    for name, s in compose["services"].items():
        env = s.get("environment", {})
        assert isinstance(env, dict), f"compose {name}: use the mapping form of environment"
        for key, value in env.items():
            yield f"compose {name}", key, str(value)


def dockerfile_env(dockerfiles: dict) -> Iterator[tuple[str, str, str]]:
    for name, instructions in dockerfiles.items():
        for ins in instructions:
            if ins.cmd.upper() == "ENV":
                pairs = list(ins.value)
                for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                    yield f"Dockerfile[{name}]", key, value


def k8s_env(renders: dict[str, Render]) -> Iterator[tuple[str, str, str]]:
    for overlay, render in renders.items():
        for o in render.objects:
            if o["kind"] == "ConfigMap":
                for key, value in o.get("data", {}).items():
                    yield f"k8s {overlay} ConfigMap", key, value
            elif o["kind"] == "Secret":
                for key, value in {**o.get("data", {}), **o.get("stringData", {})}.items():
                    yield f"k8s {overlay} Secret", key, value
        for w in render.workloads():
            for c in containers(w):
                for e in c.get("env", []):
                    yield f"k8s {overlay} {w['metadata']['name']}/{c['name']}", e["name"], e.get("value", "")


def test_every_memscore_variable_set_is_a_setting(compose: dict, dockerfiles: dict, renders: dict[str, Render]) -> None:
    settings = [*compose_env(compose), *dockerfile_env(dockerfiles), *k8s_env(renders)]
    memscore = [(where, key, value) for where, key, value in settings if key.startswith("MEMSCORE_")]
    assert len(memscore) >= 20, "collector found too few variables"
    unknown = sorted({f"{where}: {key}" for where, key, _ in memscore if key not in ENV_VARS})
    assert not unknown, "not in memscore.settings.ENV_VARS (typo, or add it there):\n" + "\n".join(unknown)
    # A number's default means a number is expected.
    bad = [
        f"{where}: {key}={value!r}"
        for where, key, value in memscore
        if ENV_VARS[key][0].isdigit() and not value.isdigit()
    ]
    bad += [
        f"{where}: {key}={value!r}"
        for where, key, value in memscore
        if key == "MEMSCORE_S3_SECURE" and value not in ("true", "false")
    ]
    assert not bad, "\n".join(bad)
