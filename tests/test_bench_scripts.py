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


def test_the_gpu_bench_smoke_plan_runs_every_part_on_the_cpu(tmp_path):
    """bench/gpu_bench.py --smoke: the script a lent GPU runs, end to end on the CPU (tiny sizes),
    so the day a device is lent it does not fail on a typo."""
    import json
    import subprocess

    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(BENCH / "gpu_bench.py"), "--smoke", "--out", str(out)], check=True, timeout=300)
    res = json.loads(out.read_text())
    assert res["info"]["device"] == "cpu" and res["info"]["smoke"]
    assert res["mlp"]["models"] == 4 and res["mlp"]["models_per_s"] > 0 and res["mlp"]["tflops"] > 0
    cnn = res["cnn"]
    assert [v["variant"] for v in cnn["variants"]] == ["eager", "eager, channels-last"]
    assert all(v["ms_per_step"] > 0 for v in cnn["variants"])
    assert cnn["best"] in {v["variant"] for v in cnn["variants"]} and cnn["whole_models"]["models"] >= 2
    match = res["match"]
    assert match["within_tolerance"] and match["max_abs_prob_diff"] == 0.0  # the CPU against itself
