"""Data flows one way: engine <- store <- worker / data plane <- servers <- CLI.

The test reads every module's import statements (module level and inside functions) and fails
on an import that goes the wrong way. A second check imports the servers' modules in a fresh
interpreter and asserts torch did not come along (the gateway and results servers never load
it unless a QueryInfluence call needs the engine's models).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "services" / "memscore"

# layer (a package or module under memscore/) -> layers it must never import
FORBIDDEN = {
    "dataplane": {"worker", "gateway", "results", "cli", "embedded", "report"},
    "store": {"worker", "gateway", "results", "dataplane", "cli", "embedded", "report", "datarefs", "runtime"},
    "datarefs": {"worker", "gateway", "results", "dataplane", "cli", "embedded"},
    "datauris": {"worker", "gateway", "results", "dataplane", "cli", "embedded", "datarefs"},
    "broker": {"worker", "gateway", "results", "dataplane", "cli", "embedded"},
    "gateway": {"worker", "results", "cli", "embedded"},
    "results": {"worker", "gateway", "cli", "embedded"},
    "auth": {"worker", "gateway", "results", "dataplane", "cli", "embedded", "rpc"},
    "rpc": {"worker", "gateway", "results", "dataplane", "cli", "embedded"},
    "client": {"worker", "gateway", "results", "dataplane", "store", "engine", "cli", "embedded"},
    "worker": {"gateway", "results", "dataplane", "cli", "embedded"},
    # generic: imports `rpc` (for `rewrap`) and nothing of jobs, stores or the engine
    "metrics": {"engine", "store", "worker", "gateway", "results", "dataplane", "cli", "embedded", "broker"},
}
NO_TORCH = (
    "dataplane",
    "store",
    "gateway",
    "results",
    "rpc",
    "client",
    "datarefs",
    "datauris",
    "broker",
    "auth",
    "metrics",
)


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "api":  # generated code
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(["memscore", *parts]), path))
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names of everything `module` imports, anywhere in the file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` names a module
    return names


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


MODULES = _modules()


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_one_way(module, path):
    layer = _layer(module)
    own = {m for m, _ in MODULES}
    problems = []
    for name in sorted(_imports(module, path)):
        top = name.split(".")[0]
        if layer == "engine":
            if top == "memscore" and _layer(name) != "engine":
                problems.append(f"the engine imports {name}")
            continue
        if (
            top == "memscore"
            and name in own | {n.rsplit(".", 1)[0] for n in own}
            and _layer(name) in FORBIDDEN.get(layer, set())
        ):
            problems.append(f"{layer} imports {name}")
        if layer in NO_TORCH and top in ("torch", "torchvision"):
            problems.append(f"{layer} imports {name}")
    assert not problems, f"{module}: " + "; ".join(problems)


def test_the_layer_rules_see_real_imports():
    """The walker resolves relative imports: a known import of the data plane is found."""
    names = _imports("memscore.dataplane.jobs", ROOT / "dataplane" / "jobs.py")
    assert "memscore.broker.TASK_TRAIN_SHARD" in names and "memscore.store.layout" in names


def test_servers_and_client_import_without_torch():
    code = (
        "import sys\n"
        "import memscore.dataplane, memscore.gateway.server, memscore.results.server, memscore.rpc\n"
        "import memscore.client, memscore.store.jobs, memscore.store.objects, memscore.datarefs, memscore.broker\n"
        "import memscore.datauris, memscore.engine.parquet\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing the servers loaded {out}"
