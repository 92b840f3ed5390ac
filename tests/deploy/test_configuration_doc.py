"""docs/configuration.md is generated from settings.ENV_VARS and must be current."""

from __future__ import annotations

import importlib.util

from memscore.settings import ENV_VARS

from .conftest import REPO


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_doc", REPO / "deploy" / "gen_config_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_is_current() -> None:
    gen = load_generator()
    assert gen.main(["--check"]) == 0, "docs/configuration.md is stale: run `python deploy/gen_config_doc.py`"


def test_configuration_doc_has_one_row_per_setting() -> None:
    text = load_generator().render(ENV_VARS)
    rows = [line for line in text.splitlines() if line.startswith("| `MEMSCORE_")]
    assert [row.split("`")[1] for row in rows] == list(ENV_VARS)
    assert "| `MEMSCORE_QUEUE` | `gpu` |" in text and "| `MEMSCORE_BROKER_URL` | (empty) |" in text
