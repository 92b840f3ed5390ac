"""Every benchmark script under bench/ still imports against the engine it measures: a
refactor that renames what a script uses fails here, not on the day someone reruns it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))


def test_the_bench_folder_has_its_scripts():
    assert {"validate", "validate_metrics", "throughput", "membership"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bench_script_imports_and_has_an_entry_point(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # scripts run as `python bench/x.py` import their siblings
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # module level only: every script runs under `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"
