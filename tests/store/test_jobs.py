"""The job-store contract, checked on Redis (a real server, test db) and on SQLite."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid

import pytest

from memscore.store.jobs import (
    DEFAULT_TENANT,
    InvalidPageToken,
    JobNotFound,
    JobRecord,
    RedisJobStore,
    RequestIdReused,
    SqliteJobStore,
    open_job_store,
)


@pytest.fixture(params=["redis", "sqlite"])
def jobs(request, tmp_path):
    if request.param == "redis":
        store = RedisJobStore(request.getfixturevalue("redis_db"), prefix=f"t{uuid.uuid4().hex[:6]}")
    else:
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield store
    store.close()


def job(job_id: str, **kw) -> JobRecord:
    return JobRecord(job_id=job_id, spec={"dataset": "digits", "models": 8}, **kw)


def test_settings_select_the_backend(make_settings, redis_url, tmp_path):
    assert isinstance(open_job_store(make_settings(redis_url=redis_url)), RedisJobStore)
    local = open_job_store(make_settings())
    assert isinstance(local, SqliteJobStore) and local.path == str(tmp_path / "home" / "jobs.sqlite3")


def test_create_get_and_unknown_id(jobs):
    rec, created = jobs.create(job("j1", shards_total=2, models_total=8), request_id="r1")
    assert created and rec.version == 1 and rec.state == "QUEUED" and rec.request_id == "r1"
    assert rec.created_at > 0 and rec.updated_at >= rec.created_at
    assert jobs.get("j1") == rec
    for call in (
        lambda: jobs.get("nope"),
        lambda: jobs.update("nope", state="RUNNING"),
        lambda: jobs.mark_shard_done("nope", 0, 4),
        lambda: jobs.request_cancel("nope"),
        lambda: jobs.cancel_requested("nope"),
        lambda: jobs.incr_attempts("nope", 0),
    ):
        with pytest.raises(JobNotFound):
            call()
    with pytest.raises(ValueError):
        jobs.create(job("j1"))  # job id taken, no request id
    for bad in (job("../x"), job("ok", kind="other"), job("ok", state="DONE")):
        with pytest.raises(ValueError):
            jobs.create(bad)


def test_same_request_id_returns_the_existing_job(jobs):
    first, created = jobs.create(job("j1"), request_id="req")
    again, created_again = jobs.create(job("j2"), request_id="req")
    assert created and not created_again and again == first
    with pytest.raises(JobNotFound):
        jobs.get("j2")
    _, created = jobs.create(job("j3"))  # no request id: no idempotency, a new job
    assert created


def test_concurrent_creates_with_one_request_id_make_one_job(jobs):
    results, barrier = [], threading.Barrier(8)

    def submit(i):
        barrier.wait()
        results.append(jobs.create(job(f"j{i}"), request_id="same"))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 1
    assert len({rec.job_id for rec, _ in results}) == 1
    assert len(jobs.list()[0]) == 1


def test_updates_bump_version_and_terminal_states_stick(jobs):
    jobs.create(job("j"))
    rec = jobs.update("j", state="RUNNING", eta_s=12.5, message="epoch 1", summary={"mean_memorization": 0.1})
    assert (rec.state, rec.eta_s, rec.version, rec.summary) == ("RUNNING", 12.5, 2, {"mean_memorization": 0.1})
    done = jobs.update("j", state="SUCCEEDED", results={"scores.parquet": "jobs/j/results/scores.parquet"})
    assert done.version == 3
    for state in ("RUNNING", "FAILED", "QUEUED"):
        assert jobs.update("j", state=state, error="late") == done
    assert jobs.mark_shard_done("j", 0, 4) == done
    assert jobs.request_cancel("j") == done and not jobs.cancel_requested("j")
    assert jobs.get("j") == done
    with pytest.raises(ValueError):
        jobs.update("j", version=99)  # store-owned fields cannot be set
    with pytest.raises(ValueError):
        jobs.update("j", state="DONE")


def test_reopen_moves_only_succeeded_jobs_back_to_queued(jobs):
    jobs.create(job("j", models_total=8))
    with pytest.raises(ValueError):
        jobs.reopen("j")
    jobs.update("j", state="SUCCEEDED")
    rec = jobs.reopen("j", models_total=16, shards_total=4)
    assert (rec.state, rec.models_total, rec.shards_total) == ("QUEUED", 16, 4)
    jobs.update("j", state="FAILED", error="boom")
    with pytest.raises(ValueError):
        jobs.reopen("j")


def test_shard_counting_is_idempotent(jobs):
    jobs.create(job("j", shards_total=3, models_total=12))
    for shard in (0, 1, 1, 0, 2, 2):
        rec = jobs.mark_shard_done("j", shard, 4)
    assert (rec.shards_done, rec.models_done) == (3, 12)
    version = rec.version
    assert jobs.mark_shard_done("j", 1, 4).version == version  # a repeat changes nothing


def test_concurrent_shard_reports_count_each_shard_once(jobs):
    jobs.create(job("j", shards_total=10))
    completions = []

    def report():
        for shard in range(10):
            rec, counted = jobs.count_shard("j", shard, 2)
            if counted and rec.shards_done == rec.shards_total:
                completions.append(shard)

    threads = [threading.Thread(target=report) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec = jobs.get("j")
    assert (rec.shards_done, rec.models_done) == (10, 20)
    assert len(completions) == 1  # exactly one reporter sees the job's last shard land


def _report_shards(path):
    store = SqliteJobStore(path)
    for shard in range(10):
        store.mark_shard_done("j", shard, 1)
        store.incr_attempts("j", 0)


def test_sqlite_store_is_safe_across_processes(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    SqliteJobStore(path).create(job("j"))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_report_shards, args=(path,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    store = SqliteJobStore(path)
    assert store.get("j").shards_done == 10
    assert store.incr_attempts("j", 0) == 31


def test_list_pages_newest_first_with_state_filter(jobs):
    for i in range(7):
        jobs.create(job(f"j{i}", created_at=1000.0 + i // 2))  # pairs share a created_at: ties
    jobs.update("j1", state="RUNNING")
    jobs.update("j4", state="RUNNING")
    expected = ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]  # created_at desc, then job id desc
    seen, token, pages = [], "", 0
    while True:
        page, token = jobs.list(page_size=3, page_token=token)
        seen += [r.job_id for r in page]
        pages += 1
        if not token:
            break
    assert seen == expected and pages == 3
    running, token = jobs.list(state="RUNNING", page_size=1)
    assert [r.job_id for r in running] == ["j4"] and token
    running2, token2 = jobs.list(state="RUNNING", page_size=1, page_token=token)
    assert [r.job_id for r in running2] == ["j1"] and token2 == ""
    assert [r.job_id for r in jobs.list(state="QUEUED")[0]] == ["j6", "j5", "j3", "j2", "j0"]
    assert jobs.list(state="FAILED") == ([], "")
    with pytest.raises(InvalidPageToken):
        jobs.list(page_token=token)  # issued for state=RUNNING
    with pytest.raises(InvalidPageToken):
        jobs.list(page_token="garbage!")
    with pytest.raises(ValueError):
        jobs.list(state="DONE")


def test_cancel_flag(jobs):
    jobs.create(job("j"))
    assert not jobs.cancel_requested("j")
    jobs.shard_started("j", 0)
    rec = jobs.request_cancel("j")
    assert rec.cancel_requested and jobs.cancel_requested("j") and rec.version == 3
    assert jobs.request_cancel("j").version == 3  # asking twice changes nothing


def test_attempts_count_per_shard(jobs):
    jobs.create(job("j"))
    assert [jobs.incr_attempts("j", 0) for _ in range(3)] == [1, 2, 3]
    assert jobs.incr_attempts("j", 1) == 1


def test_get_many_reads_the_jobs_that_exist(jobs):
    jobs.create(job("a"))
    jobs.create(job("b"))
    jobs.update("b", state="RUNNING")
    got = jobs.get_many(["a", "b", "missing", "a"])
    assert set(got) == {"a", "b"} and got["b"].state == "RUNNING" and got["b"].version == 2
    assert jobs.get_many([]) == {}


def test_delete_forgets_the_job_and_its_request_id(jobs):
    jobs.create(job("j"), request_id="r")
    jobs.mark_shard_done("j", 0, 1)
    jobs.delete("j")
    jobs.delete("j")
    with pytest.raises(JobNotFound):
        jobs.get("j")
    rec, created = jobs.create(job("j"), request_id="r")
    assert created and rec.shards_done == 0 and jobs.mark_shard_done("j", 0, 1).shards_done == 1
    assert jobs.list()[0] == [jobs.get("j")]


def test_in_memory_sqlite_store_works():
    store = SqliteJobStore(":memory:")
    store.create(job("j"))
    assert store.get("j").job_id == "j"


# --- shards in flight and cancellation (CancelJob) ---------------------------------------


def test_cancel_of_a_queued_job_is_immediate(jobs):
    jobs.create(job("j", shards_total=2))
    rec = jobs.request_cancel("j")
    assert (rec.state, rec.cancel_requested, rec.error, rec.message, rec.eta_s, rec.version) == (
        "CANCELLED",
        True,
        "cancelled by request",
        "cancelled",
        None,
        2,
    )
    assert jobs.request_cancel("j") == rec  # terminal: asking again changes nothing
    assert jobs.shard_started("j", 0) == rec  # its queued shards never start
    assert jobs.shard_stopped("j", 0) == rec and jobs.get("j") == rec


def test_cancel_between_shards_is_immediate(jobs):
    jobs.create(job("j", shards_total=2))
    jobs.shard_started("j", 0)
    jobs.mark_shard_done("j", 0, 4)
    rec = jobs.shard_stopped("j", 0)
    assert (rec.state, rec.shards_running) == ("RUNNING", [])
    assert jobs.request_cancel("j").state == "CANCELLED"


def test_shards_in_flight_are_a_set_and_start_the_job(jobs):
    jobs.create(job("j", shards_total=3, eta_s=5.0))
    rec = jobs.shard_started("j", 2)
    assert (rec.state, rec.shards_running, rec.version) == ("RUNNING", [2], 2)
    assert jobs.shard_started("j", 2) == rec  # a redelivered shard is in flight once
    assert jobs.shard_started("j", 0).shards_running == [0, 2]
    rec = jobs.shard_stopped("j", 2)
    assert (rec.state, rec.shards_running) == ("RUNNING", [0])
    assert jobs.shard_stopped("j", 2) == rec  # not in flight: nothing to do
    assert jobs.shard_stopped("j", 1) == rec
    with pytest.raises(ValueError):
        jobs.update("j", shards_running=[])  # store-owned
    for call in (lambda: jobs.shard_started("nope", 0), lambda: jobs.shard_stopped("nope", 0)):
        with pytest.raises(JobNotFound):
            call()


def test_cancel_while_two_shards_run_waits_for_both(jobs):
    jobs.create(job("j", shards_total=4))
    jobs.shard_started("j", 0)
    jobs.shard_started("j", 1)
    rec = jobs.request_cancel("j")
    assert (rec.state, rec.cancel_requested, rec.shards_running, rec.error) == ("RUNNING", True, [0, 1], "")
    assert jobs.request_cancel("j") == rec  # asking twice changes nothing
    late = jobs.shard_started("j", 2)  # a queued shard arrives: it must not start ...
    assert late == rec and late.cancel_requested
    assert jobs.shard_stopped("j", 2) == rec  # ... and its stop changes nothing while others run
    rec = jobs.shard_stopped("j", 0)
    assert (rec.state, rec.shards_running) == ("RUNNING", [1])
    rec = jobs.shard_stopped("j", 1)
    assert (rec.state, rec.shards_running, rec.error, rec.message, rec.eta_s) == (
        "CANCELLED",
        [],
        "cancelled by request",
        "cancelled",
        None,
    )
    assert jobs.shard_stopped("j", 1) == rec and jobs.mark_shard_done("j", 1, 2) == rec


def test_a_shard_left_in_flight_by_a_killed_worker_is_cleared_by_its_redelivery(jobs):
    jobs.create(job("j", shards_total=2))
    jobs.shard_started("j", 0)  # ... and the worker is SIGKILLed: no shard_stopped
    assert jobs.request_cancel("j").state == "RUNNING"
    redelivered = jobs.shard_started("j", 0)
    assert redelivered.cancel_requested  # so the redelivery does not train, it only stops
    assert jobs.shard_stopped("j", 0).state == "CANCELLED"


def test_mark_cancelled_ends_a_job_unless_it_ended(jobs):
    jobs.create(job("a"))
    jobs.shard_started("a", 0)
    jobs.request_cancel("a")
    rec = jobs.mark_cancelled("a")
    assert (rec.state, rec.error, rec.message) == ("CANCELLED", "cancelled by request", "cancelled")
    jobs.create(job("b"))
    done = jobs.update("b", state="SUCCEEDED")
    assert jobs.mark_cancelled("b") == done


def test_terminal_jobs_ignore_shards_starting_and_stopping(jobs):
    jobs.create(job("j"))
    jobs.shard_started("j", 0)
    failed = jobs.update("j", state="FAILED", error="boom")
    assert jobs.shard_started("j", 1) == failed and jobs.shard_stopped("j", 0) == failed
    assert jobs.request_cancel("j") == failed and not failed.cancel_requested


def test_reopen_forgets_shards_left_in_flight(jobs):
    jobs.create(job("j", shards_total=1))
    jobs.shard_started("j", 0)
    jobs.mark_shard_done("j", 0, 8)
    jobs.update("j", state="SUCCEEDED")  # reduce finished before shard 0 reported its stop
    rec = jobs.reopen("j", shards_total=2)
    assert (rec.state, rec.shards_running) == ("QUEUED", [])
    assert jobs.request_cancel("j").state == "CANCELLED"  # nothing in flight: not stuck waiting


def test_records_stored_before_shards_running_existed_still_load(jobs):
    jobs.create(job("j", shards_total=2))
    old = jobs.get("j").to_dict()
    del old["shards_running"]
    raw = json.dumps(old)
    if isinstance(jobs, RedisJobStore):
        jobs._r.set(jobs._k("job", "j"), raw)
    else:
        jobs._conn.execute("UPDATE jobs SET record = ? WHERE job_id = ?", (raw, "j"))
    assert jobs.get("j").shards_running == []
    assert jobs.shard_started("j", 1).shards_running == [1]


def test_cancel_racing_with_shards_ends_cancelled_with_nothing_in_flight(jobs):
    jobs.create(job("j", shards_total=40))
    trained, barrier = [], threading.Barrier(5)

    def worker(first: int) -> None:
        barrier.wait()
        for shard in range(first, 40, 4):
            rec = jobs.shard_started("j", shard)
            try:
                if rec.terminal or rec.cancel_requested:
                    continue
                trained.append(shard)
                time.sleep(0.005)
            finally:
                jobs.shard_stopped("j", shard)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(0.01)
    asked = jobs.request_cancel("j")
    for t in threads:
        t.join()
    rec = jobs.get("j")
    assert (rec.state, rec.shards_running, rec.cancel_requested) == ("CANCELLED", [], True)
    assert asked.state == ("RUNNING" if asked.shards_running else "CANCELLED")


def test_reopen_once_extends_once_per_request_id(jobs):
    jobs.create(job("j", models_total=8, shards_total=2))
    jobs.update("j", state="SUCCEEDED")
    rec, reopened = jobs.reopen_once("j", "ext-1", 8, models_total=16, shards_total=4)
    assert reopened and (rec.state, rec.models_total) == ("QUEUED", 16) and rec.extend_requests == {"ext-1": 8}
    again, reopened = jobs.reopen_once("j", "ext-1", 8, models_total=24, shards_total=6)  # a retry
    assert not reopened and again == rec
    jobs.update("j", state="SUCCEEDED")
    done = jobs.get("j")
    again, reopened = jobs.reopen_once("j", "ext-1", 8, models_total=24, shards_total=6)  # after it finished
    assert not reopened and again == done and again.models_total == 16
    with pytest.raises(RequestIdReused):
        jobs.reopen_once("j", "ext-1", 4, models_total=20)
    rec, reopened = jobs.reopen_once("j", "ext-2", 8, models_total=24, shards_total=6)
    assert reopened and rec.extend_requests == {"ext-1": 8, "ext-2": 8}
    with pytest.raises(ValueError):  # store-owned: only reopen_once records request ids
        jobs.update("j", extend_requests={})
    jobs.update("j", state="SUCCEEDED")
    assert jobs.reopen_once("j", "", 8, models_total=32)[1]  # no request id: no idempotency
    assert set(jobs.get("j").extend_requests) == {"ext-1", "ext-2"}


def test_concurrent_extends_with_one_request_id_reopen_once(jobs):
    jobs.create(job("j", models_total=8))
    jobs.update("j", state="SUCCEEDED")
    results, barrier = [], threading.Barrier(6)

    def extend():
        barrier.wait()
        results.append(jobs.reopen_once("j", "same", 8, models_total=16)[1])

    threads = [threading.Thread(target=extend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True] and jobs.get("j").models_total == 16


def test_grow_changes_a_running_job_once_for_the_model_count_it_saw(jobs):
    jobs.create(job("j", models_total=8, shards_total=2))
    rec, grown = jobs.grow("j", 8, models_total=16, shards_total=4, message="adding 8")
    assert grown and (rec.models_total, rec.shards_total, rec.state) == (16, 4, "QUEUED")
    again, grown = jobs.grow("j", 8, models_total=16, shards_total=4)  # a redelivered reduce
    assert not grown and again == rec
    jobs.update("j", state="SUCCEEDED")
    assert not jobs.grow("j", 16, models_total=32)[1] and jobs.get("j").models_total == 16


# -- tenants -----------------------------------------------------------------------------------


def test_list_and_count_active_are_per_tenant(jobs):
    for i, tenant in enumerate(["team-a", "team-b", "team-a"]):
        jobs.create(job(f"t{i}", tenant=tenant, created_at=100.0 + i))
    jobs.update("t2", state="SUCCEEDED")
    assert [r.job_id for r in jobs.list(tenant="team-a")[0]] == ["t2", "t0"]
    assert [r.job_id for r in jobs.list(tenant="team-b")[0]] == ["t1"]
    assert [r.job_id for r in jobs.list(state="SUCCEEDED", tenant="team-a")[0]] == ["t2"]
    assert jobs.list(state="SUCCEEDED", tenant="team-b")[0] == []
    assert {r.job_id for r in jobs.list()[0]} == {"t0", "t1", "t2"}  # None: every tenant's
    assert (jobs.count_active("team-a"), jobs.count_active("team-b"), jobs.count_active("nobody")) == (1, 1, 0)
    jobs.delete("t1")
    assert jobs.list(tenant="team-b")[0] == [] and jobs.count_active("team-b") == 0


def test_request_ids_are_per_tenant_and_found_per_tenant(jobs):
    a, created_a = jobs.create(job("ra", tenant="team-a"), "nightly")
    b, created_b = jobs.create(job("rb", tenant="team-b"), "nightly")
    again, created_again = jobs.create(job("rc", tenant="team-a"), "nightly")
    assert created_a and created_b and not created_again and again.job_id == "ra"
    assert jobs.find_request("team-b", "nightly").job_id == "rb"
    assert jobs.find_request("team-c", "nightly") is None
    d, _ = jobs.create(job("rd"), "nightly")  # the default tenant's ids are their own too
    assert d.tenant == "default" and d.job_id == "rd"
    jobs.delete("rb")
    assert jobs.find_request("team-b", "nightly") is None and jobs.find_request("team-a", "nightly").job_id == "ra"


def test_a_tenant_name_that_could_break_keys_is_refused(jobs):
    for bad in ("", "a:b", "../x", "a b", "x" * 65):
        with pytest.raises(ValueError, match="tenant"):
            jobs.create(job("bad", tenant=bad))


def test_an_sqlite_file_from_before_tenants_is_migrated_its_jobs_the_default_tenants(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, request_id TEXT UNIQUE, state TEXT NOT NULL, "
        "created_at REAL NOT NULL, record TEXT NOT NULL);"
    )
    rec = {"job_id": "old-1", "kind": "scoring", "state": "QUEUED", "request_id": "r1", "created_at": 5.0, "version": 1}
    old.execute("INSERT INTO jobs VALUES ('old-1', 'r1', 'QUEUED', 5.0, ?)", (json.dumps(rec),))
    old.commit()
    old.close()
    store = SqliteJobStore(path)
    assert store.get("old-1").tenant == "default"
    assert [r.job_id for r in store.list(tenant="default")[0]] == ["old-1"]
    assert store.find_request("default", "r1").job_id == "old-1" and store.count_active("default") == 1
    assert store.create(job("new", tenant="team-a"), "r1")[1]  # another tenant's "r1" is a new job


def test_beats_done_shards_and_leases(jobs):
    jobs.create(job("j", shards_total=3, models_total=6))
    assert jobs.beats("j") == {} and jobs.done_shards("j") == set()
    jobs.beat("j", "0", 100.0)
    jobs.beat("j", "reduce", 200.0)
    jobs.beat("j", "0", 150.0)
    assert jobs.beats("j") == {"0": 150.0, "reduce": 200.0}
    before = jobs.get("j").version
    jobs.beat("j", "1")
    assert jobs.get("j").version == before  # a beat wakes no WatchJob
    jobs.mark_shard_done("j", 2, 2)
    assert jobs.done_shards("j") == {2}
    assert jobs.incr_attempts("j", 0) == 1 and jobs.incr_attempts("j", 0, by=-1) == 0
    assert jobs.hold_lease("dog", "a", 30) and jobs.hold_lease("dog", "a", 30)  # taken, renewed
    assert not jobs.hold_lease("dog", "b", 30)
    assert jobs.hold_lease("other", "b", 0.05)
    time.sleep(0.1)
    assert jobs.hold_lease("other", "c", 30)  # expired: another holder takes it
    jobs.delete("j")
    assert jobs.beats("j") == {} and jobs.done_shards("j") == set()


def test_redis_jobs_from_before_tenants_are_listed_and_counted_for_the_default_tenant(redis_db):
    """Records written by the version before tenants: JSON without a tenant, in P:jobs[:STATE]
    only. The first tenant-scoped call indexes them for the default tenant, once."""
    import json

    import redis

    store = RedisJobStore(redis_db, prefix="legacy-test")
    r = redis.Redis.from_url(redis_db, decode_responses=True)  # a flushed database
    old = []
    for i, state in enumerate(("QUEUED", "SUCCEEDED", "RUNNING")):
        rec = json.loads(JobRecord(job_id=f"old-{i}", kind="scoring", state=state, created_at=100.0 + i).to_json())
        rec.pop("tenant")
        r.set(f"legacy-test:job:old-{i}", json.dumps(rec))
        r.zadd("legacy-test:jobs", {f"old-{i}": 100.0 + i})
        r.zadd(f"legacy-test:jobs:{state}", {f"old-{i}": 100.0 + i})
        old.append(f"old-{i}")
    new, _ = store.create(JobRecord(job_id="new-0", kind="scoring", tenant="team-a"))
    assert [j.job_id for j in store.list(tenant=DEFAULT_TENANT)[0]] == ["old-2", "old-1", "old-0"]
    assert [j.job_id for j in store.list(state="RUNNING", tenant=DEFAULT_TENANT)[0]] == ["old-2"]
    assert store.count_active(DEFAULT_TENANT) == 2 and store.count_active("team-a") == 1
    assert [j.job_id for j in store.list(tenant="team-a")[0]] == ["new-0"]
    assert r.exists("legacy-test:index:tenants")
    assert RedisJobStore(redis_db, prefix="legacy-test").index_untenanted_jobs() == 0  # once per database
