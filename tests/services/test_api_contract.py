"""docs/api.md, sentence by sentence: each documented behaviour of the two services that the
end-to-end flows do not already pin down, against a real embedded deployment (in-process
memory broker and worker thread, local store, SQLite job state, gRPC on loopback sockets)."""

from __future__ import annotations

import base64
import json
import math

import grpc
import numpy as np
import pytest

from memscore import embedded
from memscore.api.v1 import job_pb2
from memscore.api.v1 import results_service_pb2 as rpb
from memscore.client import Client, field_violations
from memscore.convert import anytime_to_pb
from memscore.engine.traces import Trace
from memscore.runtime import set_runtime
from memscore.settings import ENV_VARS, Settings
from memscore.store import layout
from memscore.store.jobs import JobRecord

from .conftest import write_blobs_npz, write_zip_bomb

pytestmark = pytest.mark.integration

SPEC = dict(model="mlp", models=4, epochs=3, seed=1, shard_size=2)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """(client, runtime, finished scoring job, its dataset file) on an embedded deployment."""
    tmp = tmp_path_factory.mktemp("contract")
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_VARS:
            mp.delenv(name, raising=False)
        e = embedded.start(Settings(home=tmp / "home"), 0, 0, "127.0.0.1")
        try:
            with Client(f"127.0.0.1:{e.gateway_port}", f"127.0.0.1:{e.results_port}", timeout=30) as c:
                blobs = write_blobs_npz(tmp / "blobs.npz", d=2)  # overlapping classes: models disagree
                job = c.submit_scoring(dataset=c.upload(blobs).dataset_ref, **SPEC)
                done = c.wait(job.job_id, timeout=300)
                assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
                yield c, e.runtime, done, blobs
        finally:
            e.stop()
            set_runtime(None)


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def _ranked_stream(client, job_id, **fields):
    return list(client.results.StreamRanked(rpb.StreamRankedRequest(job_id=job_id, **fields), timeout=30))


# -- StreamRanked ------------------------------------------------------------------------------


def test_stream_ranked_streams_pages_of_page_size_until_limit_in_one_call(deployment):
    client, _, job, _ = deployment
    msgs = _ranked_stream(client, job.job_id, limit=25, page_size=10)
    assert [len(m.examples) for m in msgs] == [10, 10, 5]
    assert [e.rank for m in msgs for e in m.examples] == list(range(1, 26))
    assert all(m.final and m.models == SPEC["models"] for m in msgs)  # the snapshot's model count in every one
    assert all(m.next_page_token for m in msgs[:-1]) and msgs[-1].next_page_token == ""


def test_stream_ranked_resumes_from_any_messages_token(deployment):
    client, _, job, _ = deployment
    whole = _ranked_stream(client, job.job_id, limit=25, page_size=10)
    rest = _ranked_stream(client, job.job_id, limit=25, page_size=10, page_token=whole[0].next_page_token)
    assert [e.index for m in rest for e in m.examples] == [e.index for m in whole[1:] for e in m.examples]


def test_stream_ranked_page_size_defaults_to_100_and_is_at_most_1000(deployment):
    client, _, job, _ = deployment
    msgs = _ranked_stream(client, job.job_id)
    assert [len(m.examples) for m in msgs] == [100, 100, 40]  # 240 training examples, no limit
    err = _rpc_error(lambda: _ranked_stream(client, job.job_id, page_size=1001))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in field_violations(err)] == ["page_size"]


def test_stream_ranked_ranks_examples_without_an_estimate_last_in_either_order(deployment):
    client, _, job, _ = deployment
    for order in (rpb.SORT_ORDER_DESCENDING, rpb.SORT_ORDER_ASCENDING):
        mem = [e.memorization for m in _ranked_stream(client, job.job_id, order=order) for e in m.examples]
        nan = [math.isnan(v) for v in mem]
        assert any(nan) and nan == sorted(nan), "NaN (no estimate) ranks after every number"
        finite = [v for v in mem if not math.isnan(v)]
        assert finite == sorted(finite, reverse=order == rpb.SORT_ORDER_DESCENDING)


@pytest.mark.parametrize(
    "token",
    [
        "%%% not base64",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),  # valid JSON, not a token object
        base64.urlsafe_b64encode(json.dumps({"q": {}, "offset": "ten"}).encode()).decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_stream_ranked_refuses_a_page_token_it_did_not_issue(deployment, token):
    client, _, job, _ = deployment
    err = _rpc_error(lambda: _ranked_stream(client, job.job_id, page_token=token))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in field_violations(err)] == ["page_token"]


def test_stream_ranked_refuses_a_token_of_another_query(deployment):
    client, _, job, _ = deployment
    token = _ranked_stream(client, job.job_id, page_size=10)[0].next_page_token
    err = _rpc_error(
        lambda: _ranked_stream(client, job.job_id, page_size=10, metric="heldout_accuracy", page_token=token)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "different query" in err.details()


def test_stream_ranked_refuses_an_unknown_order_and_nan_bounds_naming_each(deployment):
    """Found by test_fuzz.py: order 7 was ranked descending and a NaN bound (which no score
    compares with) streamed nothing, both answered OK."""
    client, _, job, _ = deployment
    err = _rpc_error(lambda: _ranked_stream(client, job.job_id, order=7))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in field_violations(err)] == ["order"]
    err = _rpc_error(lambda: _ranked_stream(client, job.job_id, metric="nope", min_score=math.nan, max_score=math.nan))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(err)] == ["metric", "min_score", "max_score"]  # every problem at once


# -- StreamInfluence, GetArtifact, GetExample ---------------------------------------------------


def test_a_negative_influence_limit_is_invalid_not_everything(deployment):
    client, _, job, _ = deployment
    err = _rpc_error(lambda: client.influence(job.job_id, limit=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(err)[0][0] == "limit"


def test_influence_of_an_exposure_job_is_a_failed_precondition_not_internal(deployment):
    """Found by test_fuzz.py: StreamInfluence of a SUCCEEDED exposure job looked for its
    influence.parquet and answered INTERNAL."""
    client, rt, _, _ = deployment
    rt.jobs.create(JobRecord(job_id="job-exposure-influence", kind="exposure", state="SUCCEEDED"))
    for call in (
        lambda: client.influence("job-exposure-influence"),
        lambda: client.example("job-exposure-influence", 0),
    ):
        err = _rpc_error(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "exposure" in err.details()


def test_an_error_quotes_a_huge_field_boundedly(deployment):
    """A 1 MB model name is INVALID_ARGUMENT naming the field, not an answer too large to send."""
    client, _, _, _ = deployment
    err = _rpc_error(lambda: client.submit_scoring(dataset="digits", model="x" * 1_000_000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, desc)] = [v for v in field_violations(err) if v[0] == "spec.scoring.model"]
    assert len(desc) <= 500 and len(err.details()) <= 2000


@pytest.mark.parametrize("test_index", [80, 10**6, -1])
def test_stream_influence_names_a_test_index_out_of_range(deployment, test_index):
    client, _, job, _ = deployment  # 80 test examples: 0..79
    err = _rpc_error(lambda: client.influence(job.job_id, test_index=test_index))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err) == [("test_index", f"must be in 0..79, got {test_index}")]


def test_stream_influence_without_test_index_streams_pairs_above_the_threshold_strongest_first(deployment):
    client, _, job, _ = deployment
    pairs = client.influence(job.job_id, limit=0)
    values = [p.influence for p in pairs]
    assert pairs and min(values) >= job.spec.scoring.influence_threshold - 1e-6
    assert values == sorted(values, reverse=True)


def test_influence_pairs_carry_stderr_and_exact_pvalue(deployment):
    """With 4 models no pair can clear the false discovery rate over 240 × 80 pairs."""
    client, _, job, _ = deployment
    pairs = client.influence(job.job_id, limit=0) + client.influence(job.job_id, test_index=3, limit=5)
    pairs += list(client.example(job.job_id, pairs[0].train_index).influence)
    assert all(0 < p.influence_pvalue <= 1 and p.influence_stderr > 0 and not p.significant for p in pairs)
    assert client.influence(job.job_id, limit=0, significant_only=True) == []


def _stored_influence_job(rt, job_id: str, old_format: bool = False) -> tuple[dict, int]:
    """A SUCCEEDED job whose influence.parquet comes from planted data (12 pairs of influence 0.9
    among 150 × 40, K = 96): (its influence columns, m). `old_format`: written before
    significance existed (no `significant`, `influence_pvalue`)."""
    import io

    import pyarrow.parquet as pq

    from memscore.engine.influence import InfluenceAccumulator
    from memscore.engine.scoring import ScoringResult

    rng = np.random.default_rng(7)
    n, m, K = 150, 40, 96
    masks = np.argsort(rng.random((K, n)), axis=1) < 105
    correct = rng.random((K, m)) < rng.uniform(0.1, 0.9, m)
    for j, i in enumerate(rng.choice(n, 12, replace=False)):
        correct[:, j] = rng.random(K) < np.where(masks[:, i], 0.95, 0.05)
    acc = InfluenceAccumulator(n, m)
    acc.add_models(masks, correct)
    table = ScoringResult({}, acc.compute(top_k=3), {}, np.zeros(n, np.int64), np.ones(m, np.int64)).influence_table()
    if old_format:
        table = table.drop_columns(["significant", "influence_pvalue"])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    key = layout.result_key(job_id, "influence.parquet")
    rt.objects.put_bytes(key, buf.getvalue())
    rt.jobs.create(
        JobRecord(job_id=job_id, state="SUCCEEDED", summary={"n_test": m}, results={"influence.parquet": key})
    )
    return table.to_pydict(), m


def test_stream_influence_significant_only_streams_only_significant_pairs_with_their_pvalue(deployment):
    client, rt, _, _ = deployment
    cols, _ = _stored_influence_job(rt, "job-significant-1")
    want = {(i, j) for i, j, s in zip(cols["train_index"], cols["test_index"], cols["significant"]) if s}
    pairs = client.influence("job-significant-1", limit=1000, significant_only=True)
    assert len(want) >= 12 and {(p.train_index, p.test_index) for p in pairs} == want
    assert all(p.significant and 0 < p.influence_pvalue < 0.05 for p in pairs)
    assert [p.influence for p in pairs] == sorted((p.influence for p in pairs), reverse=True)
    top = client.influence("job-significant-1", test_index=0, limit=3, significant_only=True)
    assert len(top) == 1 and top[0].significant  # of test example 0's top 3, only its planted influencer
    everything = client.influence("job-significant-1", limit=1000)  # the raw threshold's pairs
    assert len(everything) > len(pairs) and any(not p.significant for p in everything)


def test_influence_written_before_significance_reads_as_not_significant(deployment):
    client, rt, _, _ = deployment
    cols, _ = _stored_influence_job(rt, "job-significant-old", old_format=True)
    pairs = client.influence("job-significant-old", limit=1000)
    assert len(pairs) == sum(cols["above_threshold"])
    assert all(not p.significant and math.isnan(p.influence_pvalue) for p in pairs)
    assert client.influence("job-significant-old", limit=0, significant_only=True) == []


def test_influence_command_shows_significance_and_filters_to_it(deployment, monkeypatch, capsys):
    import contextlib

    from memscore.cli import main, service

    client, rt, _, _ = deployment
    _stored_influence_job(rt, "job-significant-cli")
    monkeypatch.setattr(service, "connect", lambda args: contextlib.nullcontext(client))
    assert main(["influence", "job-significant-cli", "--significant-only", "--top", "1000"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:6] == ["train_index", "test_index", "influence", "influence_stderr",
                                  "influence_pvalue", "significant"]  # fmt: skip
    assert len(rows) >= 12 and all(r.split()[5] == "True" for r in rows)


def test_get_artifact_sends_url_and_size_first_then_chunks_of_at_most_1_mib(deployment):
    client, _, job, _ = deployment
    assert {"scores.parquet", "influence.parquet", "summary.json", "heldout_probs.npy"} <= set(job.artifacts)
    for name in job.artifacts:
        msgs = list(client.results.GetArtifact(rpb.GetArtifactRequest(job_id=job.job_id, name=name), timeout=30))
        # the local store presigns nothing: a file:// URL would reveal the server's store path
        assert msgs[0].presigned_url == "" and msgs[0].size_bytes > 0 and not msgs[0].chunk
        assert all(0 < len(m.chunk) <= 1 << 20 for m in msgs[1:])
        assert sum(len(m.chunk) for m in msgs[1:]) == msgs[0].size_bytes
    err = _rpc_error(lambda: client.artifact(job.job_id, "secrets.txt"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "scores.parquet" in err.details()


def test_heldout_probs_artifact_matches_label_quality_and_ranks_by_it(deployment):
    """GetArtifact heldout_probs.npy is cleanlab's pred_probs; StreamRanked by label_quality
    (ascending: likely mislabeled first) carries the new columns."""
    import io

    client, _, job, _ = deployment
    probs = np.load(io.BytesIO(client.artifact(job.job_id, "heldout_probs.npy")))
    rows = [
        e
        for m in _ranked_stream(client, job.job_id, metric="label_quality", order=rpb.SORT_ORDER_ASCENDING, limit=20)
        for e in m.examples
    ]
    assert len(rows) == 20
    finite = [e for e in rows if not math.isnan(e.label_quality)]
    assert finite and [e.label_quality for e in finite] == sorted(e.label_quality for e in finite)
    for e in finite:
        assert e.label_quality == pytest.approx(float(probs[e.index, e.label]), rel=1e-5)
        assert e.predicted_label_heldout == int(probs[e.index].argmax())
        assert math.isfinite(e.memorization_log_odds) == (e.n_in > 0 and e.n_out > 0)


def test_get_example_index_out_of_range_is_invalid_argument(deployment):
    client, _, job, _ = deployment
    err = _rpc_error(lambda: client.example(job.job_id, 240))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(err)[0][0] == "index"


def test_query_influence_and_exposure_need_the_right_kind_of_job(deployment):
    client, _, job, _ = deployment
    req = rpb.QueryInfluenceRequest(job_id=job.job_id, examples_npz=b"", top_k=3)
    err = _rpc_error(lambda: client.results.QueryInfluence(req, timeout=30))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "keep_checkpoints" in err.details()
    err = _rpc_error(lambda: client.exposure(job.job_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- ScoringService ------------------------------------------------------------------------------


def test_terminal_states_stick_cancel_of_a_finished_job_changes_nothing(deployment):
    client, _, job, _ = deployment
    after = client.cancel(job.job_id)
    assert after.state == job_pb2.JOB_STATE_SUCCEEDED and after.version == client.get(job.job_id).version
    assert not after.cancel_requested


def test_watch_of_a_finished_job_sends_its_state_once_and_ends(deployment):
    client, _, job, _ = deployment
    events = list(client.watch(job.job_id, timeout=30))
    assert [e.state for e in events] == [job_pb2.JOB_STATE_SUCCEEDED]


def test_uploading_the_same_bytes_twice_returns_the_same_reference(deployment):
    client, _, _, blobs = deployment
    first, second = client.upload(blobs), client.upload(blobs)
    assert first.dataset_ref == second.dataset_ref and first.sha256 == second.sha256


def test_list_jobs_newest_first_page_size_0_is_50_and_above_1000_is_clamped(deployment):
    client, rt, _, _ = deployment
    for i in range(55):
        rt.jobs.create(JobRecord(job_id=f"job-list-{i:03d}", created_at=1e9 + i, state="SUCCEEDED"))
    jobs, token = client.list(page_size=0)
    assert len(jobs) == 50 and token
    created = [j.create_time.ToNanoseconds() for j in jobs]
    assert created == sorted(created, reverse=True)
    for i in range(55, 1100):  # more than a page of the maximum size
        rt.jobs.create(JobRecord(job_id=f"job-list-{i:04d}", created_at=1e9 + i, state="SUCCEEDED"))
    jobs, token = client.list(page_size=5000)  # clamped to 1000, as the proto says
    assert len(jobs) == 1000 and token
    err = _rpc_error(lambda: client.list(page_size=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(err)[0][0] == "page_size"


def test_list_jobs_refuses_a_state_no_job_state_has(deployment):
    """Found by test_fuzz.py: state 6 (no JobState) listed the jobs of every state."""
    client, _, _, _ = deployment
    err = _rpc_error(lambda: client.list(state=6))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in field_violations(err)] == ["state"]


# -- anytime summaries --------------------------------------------------------------------------


def test_anytime_summary_leaves_figures_without_an_estimate_unset(deployment):
    """One model so far: every example was either trained on or held out, never both, so no
    memorization estimate exists yet. The summary says so by leaving the field unset."""
    client, rt, _, _ = deployment
    n, m = 30, 10
    trace = Trace.from_probs(
        model_ids=np.array([0]),
        masks=np.arange(n)[None, :] % 2 == 0,
        train_correct=np.ones((1, n), bool),
        train_prob=np.ones((1, n), np.float32),
        test_correct=np.ones((1, m), bool),
        test_prob=np.ones((1, m), np.float32),
        meta={},
    )
    rec, _ = rt.jobs.create(JobRecord(job_id="job-anytime-1", state="RUNNING", shards_total=2, models_total=2))
    rt.objects.put_bytes(layout.trace_key(rec.job_id, 0), trace.to_bytes())
    rt.jobs.mark_shard_done(rec.job_id, 0, 1)
    anytime = client.get(rec.job_id).anytime
    assert anytime.models_done == 1 and anytime.HasField("mean_test_accuracy") and anytime.mean_test_accuracy == 1.0
    assert not anytime.HasField("mean_memorization") and not anytime.HasField("fraction_memorized")


def test_anytime_summary_of_an_empty_record_has_only_the_model_count():
    pb = anytime_to_pb(JobRecord(job_id="j", models_done=3))
    assert pb.models_done == 3
    assert not any(pb.HasField(f) for f in ("mean_memorization", "fraction_memorized", "mean_test_accuracy"))


@pytest.mark.parametrize("metric, ascending", [("label_quality", True), ("memorization_lower", False)])
def test_results_command_ranks_by_the_new_columns(deployment, monkeypatch, capsys, tmp_path, metric, ascending):
    """`memscore results JOB --metric label_quality|memorization_lower` against the live
    service: the CSV has every score column, in the order asked for."""
    import contextlib
    import csv

    from memscore.cli import main, service
    from memscore.engine.catalog import SCORE_COLUMNS

    client, _, job, _ = deployment
    monkeypatch.setattr(service, "connect", lambda args: contextlib.nullcontext(client))
    out = tmp_path / f"{metric}.csv"
    args = ["results", job.job_id, "--metric", metric, "--top", "30", "--csv", str(out)]
    assert main(args + (["--ascending"] if ascending else [])) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30 and set(SCORE_COLUMNS) <= set(rows[0])
    values = [float(r[metric]) for r in rows if r[metric] != "nan"]
    assert values and values == sorted(values, reverse=not ascending)
    if metric == "memorization_lower":
        assert all(float(r["memorization_lower"]) <= float(r["memorization"]) <= float(r["memorization_upper"])
                   for r in rows if r["memorization"] != "nan")  # fmt: skip


def test_a_finished_jobs_summary_shows_each_raw_figure_beside_its_honest_version(deployment):
    """GetJob of a SUCCEEDED job: the raw memorized fraction with the noise-corrected one and its
    interval, the count memorized beyond doubt, raw and significant influence pairs, as in
    summary.json."""
    client, rt, job, _ = deployment
    a = client.get(job.job_id).anytime
    summary = json.loads(rt.objects.get_bytes(layout.result_key(job.job_id, "summary.json")))
    c = summary["fraction_memorization_ge_corrected"]["0.25"]
    assert a.fraction_memorized == pytest.approx(summary["fraction_memorization_ge"]["0.25"])
    assert a.HasField("fraction_memorized_corrected") and a.fraction_memorized_corrected == pytest.approx(c["estimate"])
    assert a.fraction_memorized_lower <= a.fraction_memorized_corrected <= a.fraction_memorized_upper
    assert a.count_memorization_lower_ge_0_25 == summary["count_memorization_lower_ge_0_25"]
    assert a.influence_pairs_above_threshold == summary["influence_pairs_above_threshold"] > 0
    assert a.HasField("influence_pairs_significant")
    assert a.influence_pairs_significant == summary["influence_pairs_significant"]


def test_server_files_are_not_reachable_and_absent_reads_like_forbidden(deployment, tmp_path):
    """Without MEMSCORE_DATA_ROOTS no server path is a dataset or corpus: an existing file (the
    deployment's own data), a missing one and a `datasets/..` escape all get INVALID_ARGUMENT
    with the same message, and no job is created."""
    client, rt, _, blobs = deployment
    (tmp_path / "notes.txt").write_text("a server-side text file\n" * 100)
    newest = client.list(page_size=1)[0][0].job_id

    def refused(**spec) -> str:
        err = _rpc_error(lambda: client.submit_scoring(models=4, epochs=1, **spec))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        [(field, msg)] = [v for v in field_violations(err) if v[0] == "spec.scoring.dataset"]
        return msg.replace(repr(spec["dataset"]), "REF")

    messages = {
        refused(dataset=str(blobs)),
        refused(dataset=str(tmp_path / "missing.npz")),
        refused(dataset="datasets/../x"),
    }
    assert len(messages) == 1 and "MEMSCORE_DATA_ROOTS" in messages.pop()
    for corpus in (str(tmp_path / "notes.txt"), str(tmp_path / "missing.txt")):
        err = _rpc_error(lambda: client.submit_exposure(corpus=corpus))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(err)] == ["spec.exposure.corpus"]
    assert client.list(page_size=1)[0][0].job_id == newest


def test_exposure_submit_uploads_a_local_corpus_instead_of_naming_a_server_path(
    deployment, monkeypatch, capsys, tmp_path
):
    import contextlib

    from memscore.cli import main, service

    client, _, _, _ = deployment
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some plain text to train a tiny language model on.\n" * 40)
    monkeypatch.setattr(service, "connect", lambda args: contextlib.nullcontext(client))
    args = ["exposure", "--submit", "--corpus", str(corpus), "--canary", "pin {dd}", "--insertions", "0,1"]
    assert main(args + ["--epochs", "1"]) == 0
    out = capsys.readouterr()
    job_id = out.out.strip().splitlines()[-1]
    assert "uploaded" in out.err
    job = client.get(job_id)
    assert layout.is_dataset_key(job.spec.exposure.corpus) and job.spec.exposure.corpus.endswith(".txt")
    client.cancel(job_id)
    assert client.wait(job_id, timeout=120).state in (job_pb2.JOB_STATE_CANCELLED, job_pb2.JOB_STATE_SUCCEEDED)


def test_an_uploaded_compression_bomb_is_refused_before_it_is_inflated(deployment, tmp_path):
    """512 MiB of zeros in a ~0.5 MB .npz: INVALID_ARGUMENT from the zip directory's sizes,
    nothing stored (the same bytes are not an uploaded dataset afterwards)."""
    import hashlib

    client, rt, _, _ = deployment
    bomb = tmp_path / "bomb.npz"
    write_zip_bomb(bomb, 512 << 20)
    err = _rpc_error(lambda: client.upload(bomb))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MEMSCORE_MAX_COMPRESSION_RATIO" in err.details()
    assert not rt.objects.exists(layout.dataset_key(hashlib.sha256(bomb.read_bytes()).hexdigest()))


def test_an_invalid_upload_names_the_chunk_field_and_the_array_in_its_description(deployment, tmp_path):
    """Found by test_fuzz.py: the violations named "dataset.y_test" and "dataset.dataset",
    which are no fields of UploadDatasetRequest (the arrays are inside `chunk`)."""
    client, _, _, _ = deployment
    np.savez(tmp_path / "no_y_test.npz", x_train=np.zeros((8, 4)), y_train=np.zeros(8, int), x_test=np.zeros((2, 4)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "no_y_test.npz").read_bytes()[:50])
    missing = field_violations(_rpc_error(lambda: client.upload(tmp_path / "no_y_test.npz")))
    assert [f for f, _ in missing] == ["chunk"] and missing[0][1].startswith("not a valid dataset: y_test: missing")
    unreadable = field_violations(_rpc_error(lambda: client.upload(tmp_path / "cut.npz")))
    assert [f for f, _ in unreadable] == ["chunk"] and unreadable[0][1].startswith(
        "not a valid dataset: not a readable"
    )
