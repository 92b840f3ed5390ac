import io
import json
import math

import pyarrow.parquet as pq
import pytest

from memscore.engine.corpus import load_corpus
from memscore.engine.ensemble import Cancelled
from memscore.engine.exposure_job import EXPOSURE_COLUMNS, InvalidExposureSpec, run_exposure_job
from memscore.engine.spec import ExposureSpec

TINY = dict(steps=12, hidden=32, layers=1, device="cpu")  # a few seconds on one CPU thread


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus("builtin")[:4000]


@pytest.fixture(scope="module")
def job(corpus):
    spec = ExposureSpec(canaries=["the pin is {dd}", "key {a-d}"], insertions=[0, 2, 8], seed=3)
    seen = []
    result = run_exposure_job(spec, corpus, progress=lambda *a: seen.append(a), corpus_source="builtin[:4000]", **TINY)
    return spec, result, seen


def test_parquet_has_one_row_per_format_and_insertion_count_with_every_column(job):
    spec, result, _ = job
    table = pq.read_table(io.BytesIO(result.files["exposure.parquet"]))
    assert table.column_names == [name for name, _ in EXPOSURE_COLUMNS]
    assert table.num_rows == len(spec.canaries) * len(spec.insertions) == len(result.rows)
    rows = table.to_pylist()
    assert [(r["format"], r["insertions"]) for r in rows] == [(f, t) for f in spec.canaries for t in spec.insertions]
    assert [r["space_size"] for r in rows] == [100] * 3 + [260] * 3
    for r in rows:
        assert r["canary"].endswith(r["secret"]) and r["method"] == "enumeration" and r["rank_exact"]
        assert 0.0 <= r["exposure"] <= math.log2(r["space_size"]) + 1e-9
        assert r["exposure"] == pytest.approx(math.log2(r["space_size"]) - math.log2(r["rank"]))
    assert len({r["secret"] for r in rows[:3]}) == 3  # one distinct secret per (format, t)


def test_summary_json_records_spec_corpus_model_timings_and_the_table(job, corpus):
    spec, result, _ = job
    summary = json.loads(result.files["summary.json"])
    assert summary["spec"] == spec.to_dict()
    assert summary["corpus"]["source"] == "builtin[:4000]" and summary["corpus"]["chars"] == len(corpus)
    assert summary["model"]["steps"] == TINY["steps"] and summary["model"]["arch"] == "lstm"
    assert summary["timings"]["total_seconds"] > 0
    assert summary["canaries"] == json.loads(json.dumps(result.rows))
    assert summary["test_log_perplexity"] is None


def test_progress_counts_training_steps_then_canaries_against_one_total(job):
    _, _, seen = job
    totals = {total for _, total, _ in seen}
    assert totals == {TINY["steps"] + 6}
    assert seen[-1][:2] == (TINY["steps"] + 6, TINY["steps"] + 6) and seen[-1][2] == "measuring: canary 6/6"
    assert any(msg.startswith("training: step") for _, _, msg in seen)


def test_same_spec_and_seed_give_the_same_files(corpus, job):
    spec, result, _ = job
    again = run_exposure_job(spec, corpus, corpus_source="builtin[:4000]", **TINY)
    assert again.files["exposure.parquet"] == result.files["exposure.parquet"]


def test_a_stop_request_cancels_the_job(corpus):
    with pytest.raises(Cancelled):
        run_exposure_job(ExposureSpec(canaries=["pin {dd}"], insertions=[1]), corpus, should_stop=lambda: True, **TINY)


def test_an_invalid_spec_is_rejected_before_training(corpus):
    with pytest.raises(InvalidExposureSpec, match=r"canaries\[1\]") as e:
        run_exposure_job(ExposureSpec(canaries=["pin {dd}", "pin {dx}"], insertions=[1]), corpus, **TINY)
    assert [f for f, _ in e.value.problems] == ["canaries[1]"]


# --- ExposureSpec.validate ---------------------------------------------------------------


def test_validate_names_each_bad_canary_by_index_with_the_parser_message():
    spec = ExposureSpec(canaries=["the pin is {dddd}", "no slot here", "pin {dxd}", "pin {dd", "ok {a}"])
    problems = dict(spec.validate())
    assert set(problems) == {"canaries[1]", "canaries[2]", "canaries[3]"}
    assert "has no slot" in problems["canaries[1]"]
    assert "unknown placeholder 'x'" in problems["canaries[2]"]
    assert "never closed" in problems["canaries[3]"]


def test_validate_rejects_more_insertion_counts_than_a_format_has_secrets():
    problems = ExposureSpec(canaries=["pin {d}", "pin {dd}"], insertions=list(range(11))).validate()
    assert [f for f, _ in problems] == ["canaries[0]"] and "only 10 possible secrets" in problems[0][1]


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(insertions=[]), "insertions"),
        (dict(insertions=[1, -1]), "insertions"),
        (dict(insertions=["1"]), "insertions"),
        (dict(model="gru"), "model"),
        (dict(canaries=[]), "canaries"),
        (dict(num_samples=10), "num_samples"),
    ],
)
def test_validate_reports_the_other_fields(fields, field):
    assert [f for f, _ in ExposureSpec(**fields).validate()] == [field]


def test_the_default_spec_is_valid():
    assert ExposureSpec().validate() == []
