"""Every RPC of both services fuzzed over real loopback sockets (hypothesis): requests built from
the protobuf descriptors (negative and huge numbers, NaN, empty, 100 KB, unicode, control and
path-like strings, unknown enum values, nested and repeated fields, oneofs) mixed with
valid-looking ones, against a gateway and results server holding real finished jobs.

Properties: no call is answered UNKNOWN, INTERNAL, UNAVAILABLE or DEADLINE_EXCEEDED; every error
is the server's own google.rpc.Status (not one the client made up, as for trailers too large to
accept) with a bounded message (rpc.MAX_MESSAGE_CHARS) quoting none of the server's paths; every
INVALID_ARGUMENT carries a google.rpc.BadRequest whose violations each name a field path of the
request message; a request known to be bad is never answered OK, and is INVALID_ARGUMENT naming
its field when the job it names allows the call; answers that are OK agree with their request;
the servers still answer Health SERVING afterwards. About 3,300 requests (counted, at least
2,000 asserted) in about 25 s on 2 cores, 10 s of it the setup (one real scoring and one
exposure job on an embedded worker)."""

from __future__ import annotations

import dataclasses
import io
import math
import re
import zipfile
from collections import Counter

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memscore import embedded
from memscore.api.v1 import job_pb2
from memscore.api.v1 import results_service_pb2 as rpb
from memscore.api.v1 import results_service_pb2_grpc as rpb_grpc
from memscore.api.v1 import scoring_service_pb2 as spb
from memscore.api.v1 import scoring_service_pb2_grpc as spb_grpc
from memscore.client import Client
from memscore.dataplane import ScoringPlane
from memscore.engine.catalog import RANK_METRICS
from memscore.gateway.server import serve as serve_gateway
from memscore.interceptors import MAX_DESCRIPTION_CHARS, MAX_MESSAGE_CHARS
from memscore.results.server import serve as serve_results
from memscore.runtime import Runtime, set_runtime
from memscore.settings import ENV_VARS, Settings
from memscore.store import layout

from .conftest import write_blobs_npz

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TRAIN, N_TEST, FEATURES, CLASSES = 120, 40, 16, 4  # the scoring job's blobs
TIMEOUT_S = 10  # per call: a healthy server answers any of these in well under a second
MIN_REQUESTS = 2000
SENT: Counter = Counter()  # requests sent per RPC
ANSWERS: Counter = Counter()  # (RPC, status code name) of every answer, printed at the end
POOL: dict = {}  # what the deployment holds (job ids, refs, tokens), filled by the fixture
FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the working tree; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# -- the deployment --------------------------------------------------------------------------


def _clone(rt: Runtime, rec, state: str, suffix: str) -> str:
    """A copy of job `rec` (record and objects) under a new id, in `state`."""
    new_id = f"{rec.job_id[:-4]}{suffix}"
    old_prefix, new_prefix = layout.job_prefix(rec.job_id), layout.job_prefix(new_id)
    for key in rt.objects.list(old_prefix):
        rt.objects.put_bytes(new_prefix + key.removeprefix(old_prefix), rt.objects.get_bytes(key))
    results = (
        {n: new_prefix + k.removeprefix(old_prefix) for n, k in rec.results.items()} if state == "SUCCEEDED" else {}
    )
    rt.jobs.create(dataclasses.replace(rec, job_id=new_id, state=state, results=results, created_at=0.0))
    return new_id


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, torch_one_thread):
    """Stubs of a gateway (whose work is never run) and a results server over one store, holding
    a SUCCEEDED scoring job (keep_checkpoints) and exposure job run by a real embedded worker,
    copies of the scoring job (SUCCEEDED for ExtendJob and CancelJob, RUNNING for anytime
    answers) and a FAILED, a QUEUED and a CANCELLED job."""
    tmp = tmp_path_factory.mktemp("fuzz")
    roots = tmp / "roots"
    roots.mkdir()
    blobs = write_blobs_npz(roots / "blobs.npz", n=N_TRAIN, m=N_TEST, d=FEATURES, classes=CLASSES)
    corpus = roots / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_VARS:
            mp.delenv(name, raising=False)
        settings_ = Settings(
            home=tmp / "home",
            data_roots=(str(roots),),
            tenant_max_active_jobs=1_000_000,  # fuzzed submits stay QUEUED: never a quota answer
            watchdog_interval_s=0,  # the copied RUNNING jobs stay as they are
        )
        e = embedded.start(settings_, 0, 0, "127.0.0.1")
        try:
            with Client(f"127.0.0.1:{e.gateway_port}", f"127.0.0.1:{e.results_port}", timeout=30) as c:
                ref, corpus_ref = c.upload(blobs).dataset_ref, c.upload(corpus).dataset_ref
                jobs = [
                    c.submit_scoring(
                        dataset=ref, keep_checkpoints=True, model="mlp", models=4, epochs=2, seed=3, shard_size=2
                    ),
                    c.submit_exposure(canaries=["the pin is {dd}"], insertions=[0, 2], epochs=1, seed=2),
                ]
                scoring, exposure = [c.wait(j.job_id, timeout=300) for j in jobs]
                for done in (scoring, exposure):
                    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
        finally:
            e.stop()
            set_runtime(None)

        rt = Runtime.from_settings(settings_)
        rec = rt.jobs.get(scoring.job_id)
        extendable = [_clone(rt, rec, "SUCCEEDED", f"e{i:03d}") for i in range(3)]
        running = [_clone(rt, rec, "RUNNING", f"r{i:03d}") for i in range(2)]
        failed = _clone(rt, rec, "FAILED", "f000")
        queued = _clone(rt, rec, "QUEUED", "q000")
        cancelled = _clone(rt, rec, "CANCELLED", "c000")
        gw, gw_port = serve_gateway(rt, "127.0.0.1:0", ScoringPlane(rt, enqueue=lambda name, args: None))
        res, res_port = serve_results(rt, "127.0.0.1:0")
        gch, rch = grpc.insecure_channel(f"127.0.0.1:{gw_port}"), grpc.insecure_channel(f"127.0.0.1:{res_port}")
        scoring_stub, results_stub = spb_grpc.ScoringServiceStub(gch), rpb_grpc.ResultsServiceStub(rch)

        list_tokens = {}
        for state in (job_pb2.JOB_STATE_UNSPECIFIED, job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_RUNNING):
            page = scoring_stub.ListJobs(spb.ListJobsRequest(page_size=1, state=state), timeout=TIMEOUT_S)
            list_tokens[page.next_page_token] = state
        ranked_query = dict(job_id=scoring.job_id, metric="memorization", page_size=7)
        first = next(iter(results_stub.StreamRanked(rpb.StreamRankedRequest(**ranked_query), timeout=TIMEOUT_S)))
        stable = [scoring.job_id, exposure.job_id, running[0], failed, queued, cancelled]
        missing = ["job-0000000000000000", scoring.job_id[:-1] + "x", scoring.job_id.upper(), scoring.job_id + " "]
        POOL.update(
            home=str(settings_.home),
            scoring=scoring.job_id,
            exposure=exposure.job_id,
            succeeded_scoring={scoring.job_id, *extendable},
            anytime={running[0], running[1]},
            extendable=extendable,
            stable_ids=stable + missing,
            protected={scoring.job_id, exposure.job_id, running[0]},
            existing=stable,
            exposure_ids=[exposure.job_id],
            valid_datasets=[ref, "mnist1d", str(blobs)],
            valid_corpora=["", "builtin", corpus_ref, str(corpus)],
            mutable_ids=extendable + [running[1], failed, queued, cancelled] + missing,
            refs=[
                ref,
                corpus_ref,
                str(blobs),
                str(corpus),
                f"{roots}/../roots/blobs.npz",
                f"{roots}/../home/jobs.sqlite3",
                str(roots),
                str(settings_.home),
                "mnist1d",
                "digits",
                "longtail",
                "builtin",
                layout.dataset_key("0" * 64),
                layout.dataset_key("f" * 64, "txt"),
                ref.removesuffix(".npz") + ".txt",
                corpus_ref.removesuffix(".txt") + ".npz",
            ],
            artifacts=sorted(set(scoring.artifacts) | set(exposure.artifacts)),
            list_tokens=list_tokens,
            ranked_token=(first.next_page_token, ranked_query),
        )
        yield scoring_stub, results_stub, (gch, rch)
        gch.close()
        rch.close()
        gw.stop(grace=1).wait()
        res.stop(grace=1).wait()


def pool(name: str) -> st.SearchStrategy:
    """One of the deployment's `POOL[name]` (drawn once the fixture has filled it)."""
    return st.deferred(lambda: st.sampled_from(sorted(POOL[name])))


# -- requests from descriptors ---------------------------------------------------------------

SPECIAL_STRINGS = [
    "", " ", "\x00", "\x7f", "\n", "\t\r", "\x1b[31m", "../", "../../etc/passwd", "/etc/passwd", "/", ".",
    "~/.ssh/id_rsa", "s3://memscore/jobs/x", "s3://", "file:///etc/passwd", "http://169.254.169.254/", "C:\\x",
    "datasets/", "datasets/../jobs/", "jobs/", "%s%n%x", "{}", "{d}", "{ddd-dd-dddd}", "{", "}", "{{d}}",
    "' OR 1=1 --", "\u202e", "é", "\U0001f984", "null", "NaN", "-1", "0", "job-", "*", "?", "$HOME",
    "memorization", "scores.parquet", "mlp", "auto", "lstm", "transformer", "cnn", "resnet",
]  # fmt: skip
REPEATED = ["a", "/", "../", "é", "\x00", "{d}", "\U0001f984", "job-", "datasets/"]


def _huge_strings() -> st.SearchStrategy:
    """Strings of 256 characters to about 100 KB, built without drawing every character."""
    return st.sampled_from(REPEATED).flatmap(
        lambda s: st.integers(256 // len(s), 100_000 // len(s)).map(lambda n: s * n)
    )


STRINGS = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),  # surrogates cannot be UTF-8
    st.text(st.characters(max_codepoint=0x1F), max_size=8),  # control characters
    _huge_strings(),
)


def _ints(bits: int, signed: bool) -> st.SearchStrategy:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    edges = (lo, lo + 1, -1000, -2, -1, 0, 1, 2, 3, 4, 10, 100, 1000, 1001, 10**5, 10**7, hi - 1, hi)
    edges = [e for e in edges if lo <= e <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -5), min(hi, 1100)), st.integers(lo, hi))


def _bytes() -> st.SearchStrategy:
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"", b"\x00", b"PK\x03\x04", b"\x93NUMPY", b"not an npz"]),
        st.sampled_from([b"\x00", b"PK", b"\xff"]).flatmap(lambda b: st.integers(256, 100_000).map(lambda n: b * n)),
        st.deferred(lambda: QUERY_NPZ),
    )


SCALARS = {
    FD.TYPE_INT32: _ints(32, True),
    FD.TYPE_SINT32: _ints(32, True),
    FD.TYPE_SFIXED32: _ints(32, True),
    FD.TYPE_INT64: _ints(64, True),
    FD.TYPE_SINT64: _ints(64, True),
    FD.TYPE_SFIXED64: _ints(64, True),
    FD.TYPE_UINT32: _ints(32, False),
    FD.TYPE_FIXED32: _ints(32, False),
    FD.TYPE_UINT64: _ints(64, False),
    FD.TYPE_FIXED64: _ints(64, False),
    FD.TYPE_DOUBLE: st.one_of(
        st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e300, math.nan, math.inf, -math.inf]), st.floats()
    ),
    FD.TYPE_FLOAT: st.floats(width=32),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_STRING: STRINGS,
    FD.TYPE_BYTES: _bytes(),
}

# Values a field of this name meets in practice: ids of jobs that exist, refs that resolve, ...
HINTS = {
    "job_id": st.one_of(pool("stable_ids"), pool("mutable_ids")),
    "dataset": pool("refs"),
    "corpus": pool("refs"),
    "name": pool("artifacts"),
    "metric": st.sampled_from(RANK_METRICS),
    "page_token": st.one_of(pool("list_tokens"), st.deferred(lambda: st.just(POOL["ranked_token"][0]))),
    "request_id": st.sampled_from(["r1", "r2", "fuzz", "x" * 128, "x" * 129]),
    "canaries": st.lists(st.sampled_from(["pin {dd}", "the code is {ddd}", "{dddd}", "no slot", "{x}"]), max_size=3),
}


def _field_values(f, depth: int) -> st.SearchStrategy:
    if f.type == FD.TYPE_MESSAGE:
        one = messages(f.message_type, depth + 1)
    elif f.type == FD.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        one = st.one_of(st.sampled_from(numbers), st.integers(-3, 40), st.integers(-(2**31), 2**31 - 1))
    else:
        one = SCALARS[f.type]
    if f.is_repeated and f.type in (FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_MESSAGE):
        values = st.lists(one, max_size=4)
    elif f.is_repeated:  # long lists of numbers too
        values = st.one_of(st.lists(one, max_size=4), st.lists(one, min_size=50, max_size=300))
    else:
        values = one
    return st.one_of(HINTS[f.name], values) if f.name in HINTS else values


@st.composite
def _message(draw, descriptor, depth: int):
    real_oneofs = [o for o in descriptor.oneofs if len(o.fields) > 1 or not o.name.startswith("_")]
    in_oneof = {f.name for o in real_oneofs for f in o.fields}
    kwargs = {}
    for f in descriptor.fields:
        if f.name not in in_oneof and draw(st.booleans()):
            kwargs[f.name] = draw(_field_values(f, depth))
    for o in real_oneofs:
        chosen = draw(st.sampled_from([None, *o.fields]))
        if chosen is not None:
            kwargs[chosen.name] = draw(_field_values(chosen, depth))
    return message_factory.GetMessageClass(descriptor)(**kwargs)


def messages(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any message of this type: each field unset or any value of its type, one member of each
    oneof at most, nested messages three levels deep."""
    if depth > 3:
        return st.just(message_factory.GetMessageClass(descriptor)())
    return _message(descriptor, depth)


@st.composite
def _one_field_fuzzed(draw, valid: st.SearchStrategy):
    """A valid-looking message with one field, at any depth, replaced by any value of its type."""
    msg = type(original := draw(valid))()
    msg.CopyFrom(original)
    target = msg
    while True:
        f = draw(st.sampled_from(list(target.DESCRIPTOR.fields)))
        nested = f.type == FD.TYPE_MESSAGE and not f.is_repeated and target.HasField(f.name)
        if not (nested and draw(st.booleans())):
            break
        target = getattr(target, f.name)
    value = draw(_field_values(f, 1))
    target.ClearField(f.name)
    if f.is_repeated:
        getattr(target, f.name).extend(value)
    elif f.type == FD.TYPE_MESSAGE:
        getattr(target, f.name).CopyFrom(value)
    else:
        setattr(target, f.name, value)
    return msg


def requests(valid: st.SearchStrategy, descriptor) -> st.SearchStrategy:
    """Valid-looking requests, the same with one field fuzzed, and requests built from nothing
    but the descriptor."""
    return st.one_of(valid, _one_field_fuzzed(valid), messages(descriptor))


# -- valid-looking requests ------------------------------------------------------------------


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _claimed_shape_npz(shape: tuple) -> bytes:
    """An .npz whose x.npy header claims `shape` (float32) but holds 64 bytes: a memory bomb."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(bytes(64))
        z.writestr("y.npy", _npy(np.zeros(4, np.int64)))
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _deflated_zeros_npz(x_rows: int) -> bytes:
    """An .npz of deflated zeros: x (x_rows, FEATURES) float32 in a few KB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy(np.zeros((x_rows, FEATURES), np.float32)))
        z.writestr("y.npy", _npy(np.zeros(x_rows, np.int64)))
    return buf.getvalue()


VALID_QUERIES: set[bytes] = set()  # query .npz payloads generated valid (x, y of the job's shape)


@st.composite
def _query_points(draw, valid: bool = False) -> tuple[bytes, bool]:
    q = draw(st.integers(1, 12))
    x = draw(st.sampled_from(["ok", "uint8"] if valid else ["ok", "uint8", "nan", "shape", "object", "strings", "0d"]))
    y = draw(st.sampled_from(["ok"] if valid else ["ok", "negative", "too_big", "float", "length"]))
    rng = np.random.default_rng(draw(st.integers(0, 9)))
    xs = {
        "ok": rng.normal(size=(q, FEATURES)).astype(np.float32),
        "uint8": rng.integers(0, 255, (q, FEATURES)).astype(np.uint8),
        "nan": np.full((q, FEATURES), np.nan, np.float32),
        "shape": rng.normal(size=(q, FEATURES + 1)),
        "object": np.array([None] * q, dtype=object),
        "strings": np.array(["a"] * q),
        "0d": np.float32(1.0),
    }[x]
    ys = {
        "ok": rng.integers(0, CLASSES, q),
        "negative": np.full(q, -1),
        "too_big": np.full(q, CLASSES),
        "float": np.zeros(q, np.float64),
        "length": np.zeros(q + 1, np.int64),
    }[y]
    payload = _npz(x=xs, y=ys)  # object arrays are pickled: the server must never unpickle
    if x in ("ok", "uint8") and y == "ok":
        VALID_QUERIES.add(payload)
    return payload, payload in VALID_QUERIES


QUERY_NPZ = st.one_of(
    _query_points().map(lambda p: p[0]),
    st.sampled_from([(10**6, FEATURES), (10**9, FEATURES), (10**12,), (2**62,)]).map(_claimed_shape_npz),
    st.sampled_from([20_000, 300_000]).map(_deflated_zeros_npz),
    st.just(_npy(np.zeros((3, FEATURES), np.float32))),  # a bare .npy
    st.just(_npz(a=np.zeros(3))),  # no x, y
)


def _scoring_spec() -> st.SearchStrategy:
    return st.builds(
        job_pb2.ScoringSpec,
        dataset=st.one_of(pool("valid_datasets"), pool("refs")),
        model=st.sampled_from(["auto", "mlp", ""]),
        models=st.integers(2, 8),
        ratio=st.sampled_from([0.0, 0.5, 0.7]),
        epochs=st.integers(0, 3),
        seed=st.integers(0, 5),
        shard_size=st.integers(0, 2),
        label_noise=st.sampled_from([0.0, 0.1]),
        keep_checkpoints=st.booleans(),
        reliability_metric=st.sampled_from(["", "memorization", "memorization_soft"]),
    )


def _exposure_spec() -> st.SearchStrategy:
    return st.builds(
        job_pb2.ExposureSpec,
        corpus=st.one_of(pool("valid_corpora"), pool("refs")),
        canaries=st.lists(st.sampled_from(["pin {dd}", "the code is {ddd}", "{dddd}"]), min_size=1, max_size=2),
        insertions=st.lists(st.integers(0, 20), min_size=1, max_size=3),
        model=st.sampled_from(["lstm", "transformer"]),
        epochs=st.integers(0, 2),
        enumeration_budget=st.integers(1, 1000),
        num_samples=st.sampled_from([100, 1000]),
    )


SUBMIT = st.builds(
    spb.SubmitJobRequest,
    spec=st.one_of(
        st.builds(job_pb2.JobSpec, scoring=_scoring_spec()),
        st.builds(job_pb2.JobSpec, exposure=_exposure_spec()),
    ),
    request_id=st.one_of(st.just(""), st.uuids().map(str), st.sampled_from(["r1", "r2"])),
)


# -- checking one call -----------------------------------------------------------------------

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def names_a_field(descriptor, path: str) -> bool:
    """`path` (e.g. "spec.scoring.models", "spec.exposure.canaries[0]") leads to a field of
    messages of type `descriptor`, as google.rpc.BadRequest's `field` must (AIP-193)."""
    if not path:
        return False
    for i, part in enumerate(path.split(".")):
        m = _SEGMENT.fullmatch(part)
        f = descriptor.fields_by_name.get(m.group(1)) if m else None
        if f is None or (m.group(2) and not f.is_repeated):
            return False
        if i < path.count("."):
            if f.type != FD.TYPE_MESSAGE:
                return False
            descriptor = f.message_type
    return True


def violations(err: grpc.RpcError) -> list:
    status = rpc_status.from_call(err)
    assert status is not None, f"INVALID_ARGUMENT without a google.rpc.Status: {err.details()!r}"
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            out += list(br.field_violations)
    return out


def check(rpc: str, request, call, bad: set[str] = frozenset(), must_name: bool = False):
    """Send one request (`call()` returns the answer, reading streams to the end) and check the
    properties. `bad`: fields known to be bad (never OK); with `must_name`, the answer must be
    INVALID_ARGUMENT naming one of them. Returns (code, answer or None)."""
    SENT[rpc] += 1
    stream = request if isinstance(request, list) else [request]  # a client stream: its messages
    descriptor = spb.UploadDatasetRequest.DESCRIPTOR if isinstance(request, list) else request.DESCRIPTOR
    try:
        answer, code = call(), grpc.StatusCode.OK
    except grpc.RpcError as err:
        answer, code = None, err.code()
        details = err.details() or ""
        assert code in ALLOWED, f"{rpc} answered {code.name}: {details[:500]!r}"
        status = rpc_status.from_call(err)  # the server's own answer, not one the client made up
        assert status is not None and status.code == code.value[0], f"{rpc}: {code.name} {details[:500]!r}"
        assert len(details) <= MAX_MESSAGE_CHARS, f"{rpc}: a {len(details)}-character message"
        if not any(POOL["home"].encode() in r.SerializeToString() for r in stream):
            assert POOL["home"] not in details, f"{rpc} told the server's paths: {details[:500]!r}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            found = violations(err)
            assert found, f"{rpc}: INVALID_ARGUMENT without field violations: {details[:500]!r}"
            for v in found:
                assert names_a_field(descriptor, v.field), f"{rpc}: violation of {v.field!r}, not a field"
                assert v.description and len(v.description) <= MAX_DESCRIPTION_CHARS, (rpc, v.field)
            if bad:
                named = {v.field.split(".")[0].split("[")[0] for v in found}
                assert named & bad or not must_name, f"{rpc}: bad {sorted(bad)}, named {sorted(named)}"
    ANSWERS[rpc, code.name] += 1
    if bad:
        assert code != grpc.StatusCode.OK, f"{rpc} accepted bad {sorted(bad)}"
        if must_name:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{rpc}: bad {sorted(bad)} answered {code.name}"
    return code, answer


def _unknown_enum(enum_type, value: int) -> bool:
    return value not in {v.number for v in enum_type.values}


# -- the results service (read-only: fuzzed first) -------------------------------------------


def _ranked_requests() -> st.SearchStrategy:
    valid = st.builds(
        rpb.StreamRankedRequest,
        job_id=st.one_of(pool("succeeded_scoring"), pool("anytime")),
        metric=st.sampled_from(["", *RANK_METRICS]),
        order=st.sampled_from([0, 1, 2]),
        classes=st.lists(st.integers(0, CLASSES - 1), max_size=3),
        min_score=st.one_of(st.none(), st.floats(-1, 1)),  # None: an optional field left unset
        max_score=st.one_of(st.none(), st.floats(-1, 1), st.just(math.inf)),
        limit=st.integers(0, 130),
        page_size=st.sampled_from([0, 1, 7, 50, 1000]),
        page_token=st.just(""),
    )
    resumed = st.sampled_from([0, 7, 50]).map(  # page_size is no part of the query
        lambda size: rpb.StreamRankedRequest(
            **{**POOL["ranked_token"][1], "page_size": size}, page_token=POOL["ranked_token"][0]
        )
    )
    return requests(st.one_of(valid, resumed), rpb.StreamRankedRequest.DESCRIPTOR)


def _same_query(req) -> bool:
    """`req` asks for the ranking the issued token belongs to (page_size aside: any may resume)."""
    query = POOL["ranked_token"][1]
    return (
        (req.job_id, req.metric or "memorization", req.order, sorted(set(req.classes)), req.limit)
        == (query["job_id"], query["metric"], req.order if req.order in (0, 1) else -1, [], 0)
        and not req.HasField("min_score")
        and not req.HasField("max_score")
    )


@fuzz(400)
@given(req=_ranked_requests())
def test_stream_ranked_answers_every_request_with_a_defined_status(deployment, req):
    _, results, _ = deployment
    bad = set()
    if req.metric and req.metric not in RANK_METRICS:
        bad.add("metric")
    if not 0 <= req.page_size <= 1000:
        bad.add("page_size")
    if req.limit < 0:
        bad.add("limit")
    if _unknown_enum(rpb.SortOrder.DESCRIPTOR, req.order):
        bad.add("order")
    for bound in ("min_score", "max_score"):
        if req.HasField(bound) and math.isnan(getattr(req, bound)):
            bad.add(bound)
    if req.page_token and not (req.page_token == POOL["ranked_token"][0] and _same_query(req)):
        bad.add("page_token")
    fits = req.job_id in POOL["succeeded_scoring"]
    code, pages = check(
        "StreamRanked", req, lambda: list(results.StreamRanked(req, timeout=TIMEOUT_S)), bad, must_name=fits
    )
    if code == grpc.StatusCode.OK:
        examples = [e for p in pages for e in p.examples]
        assert not req.limit or len(examples) <= req.limit
        assert all(len(p.examples) <= (req.page_size or 100) for p in pages)
        ranks = [e.rank for e in examples]
        assert not ranks or ranks == list(range(ranks[0], ranks[0] + len(ranks)))  # one page after another
        assert not req.classes or all(e.label in req.classes for e in examples)
        assert pages[-1].next_page_token == ""


@fuzz(250)
@given(
    req=requests(
        st.builds(
            rpb.GetExampleRequest,
            job_id=st.one_of(pool("succeeded_scoring"), pool("anytime")),
            index=st.integers(0, N_TRAIN - 1),
        ),
        rpb.GetExampleRequest.DESCRIPTOR,
    )
)
def test_get_example_answers_every_request_with_a_defined_status(deployment, req):
    _, results, _ = deployment
    bad = {"index"} if not 0 <= req.index < N_TRAIN else set()
    fits = req.job_id in POOL["succeeded_scoring"] | POOL["anytime"]
    code, answer = check("GetExample", req, lambda: results.GetExample(req, timeout=TIMEOUT_S), bad, fits)
    if code == grpc.StatusCode.OK:
        assert answer.example.index == req.index and all(p.train_index == req.index for p in answer.influence)


@fuzz(250)
@given(
    req=requests(
        st.builds(
            rpb.StreamInfluenceRequest,
            job_id=pool("succeeded_scoring"),
            test_index=st.one_of(st.none(), st.integers(0, N_TEST - 1)),
            limit=st.integers(0, 600),
            significant_only=st.booleans(),
        ),
        rpb.StreamInfluenceRequest.DESCRIPTOR,
    )
)
def test_stream_influence_answers_every_request_with_a_defined_status(deployment, req):
    _, results, _ = deployment
    bad = {"limit"} if req.limit < 0 else set()
    if req.HasField("test_index") and not 0 <= req.test_index < N_TEST:
        bad.add("test_index")
    fits = req.job_id in POOL["succeeded_scoring"]
    code, pages = check(
        "StreamInfluence", req, lambda: list(results.StreamInfluence(req, timeout=TIMEOUT_S)), bad, fits
    )
    if code == grpc.StatusCode.OK:
        pairs = [p for page in pages for p in page.pairs]
        assert len(pairs) <= (req.limit or 100)
        assert not req.HasField("test_index") or all(p.test_index == req.test_index for p in pairs)
        assert not req.significant_only or all(p.significant for p in pairs)


@fuzz(200)
@given(
    req=requests(
        st.builds(rpb.GetArtifactRequest, job_id=pool("succeeded_scoring"), name=pool("artifacts")),
        rpb.GetArtifactRequest.DESCRIPTOR,
    )
)
def test_get_artifact_answers_every_request_with_a_defined_status(deployment, req):
    _, results, _ = deployment
    bad = {"name"} if not req.name else set()
    code, parts = check("GetArtifact", req, lambda: list(results.GetArtifact(req, timeout=TIMEOUT_S)), bad, True)
    if code == grpc.StatusCode.OK:
        assert parts[0].size_bytes == sum(len(p.chunk) for p in parts) > 0
        assert "/home/" not in parts[0].presigned_url and POOL["home"] not in parts[0].presigned_url


@fuzz(300)
@given(
    req=requests(
        st.builds(
            rpb.QueryInfluenceRequest,
            job_id=pool("succeeded_scoring"),
            examples_npz=st.one_of(_query_points(valid=True).map(lambda p: p[0]), QUERY_NPZ),
            top_k=st.sampled_from([0, 1, 3, 1000]),
        ),
        rpb.QueryInfluenceRequest.DESCRIPTOR,
    )
)
def test_query_influence_answers_every_request_with_a_defined_status(deployment, req):
    _, results, _ = deployment
    bad = set() if req.examples_npz in VALID_QUERIES else {"examples_npz"}
    if not 0 <= req.top_k <= 1000:
        bad.add("top_k")
    fits = req.job_id in POOL["succeeded_scoring"]
    code, answer = check("QueryInfluence", req, lambda: results.QueryInfluence(req, timeout=TIMEOUT_S), bad, fits)
    if code == grpc.StatusCode.OK:
        assert all(0 <= p.train_index < N_TRAIN for p in answer.pairs)


@fuzz(150)
@given(req=requests(st.builds(rpb.GetExposureRequest, job_id=pool("exposure_ids")), rpb.GetExposureRequest.DESCRIPTOR))
def test_get_exposure_answers_every_request_with_a_defined_status(deployment, req):
    _, results, _ = deployment
    code, answer = check("GetExposure", req, lambda: results.GetExposure(req, timeout=TIMEOUT_S))
    if code == grpc.StatusCode.OK:
        assert req.job_id == POOL["exposure"] and len(answer.canaries) == 2


# -- the scoring service ---------------------------------------------------------------------


def _request_id_bad(request_id: str) -> bool:
    return len(request_id) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in request_id)


@fuzz(200)
@given(req=requests(st.builds(spb.GetJobRequest, job_id=pool("existing")), spb.GetJobRequest.DESCRIPTOR))
def test_get_job_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    code, answer = check("GetJob", req, lambda: scoring.GetJob(req, timeout=TIMEOUT_S))
    if code == grpc.StatusCode.OK:
        assert answer.job.job_id == req.job_id


@fuzz(300)
@given(
    req=requests(
        st.one_of(
            st.builds(spb.ListJobsRequest, page_size=st.integers(0, 1001), state=st.integers(0, 5)),
            pool("list_tokens").map(lambda t: spb.ListJobsRequest(page_token=t, state=POOL["list_tokens"][t])),
        ),
        spb.ListJobsRequest.DESCRIPTOR,
    )
)
def test_list_jobs_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    bad = {"page_size"} if req.page_size < 0 else set()
    if _unknown_enum(job_pb2.JobState.DESCRIPTOR, req.state):
        bad.add("state")
    if req.page_token and POOL["list_tokens"].get(req.page_token) != req.state:
        bad.add("page_token")
    code, answer = check("ListJobs", req, lambda: scoring.ListJobs(req, timeout=TIMEOUT_S), bad, must_name=True)
    if code == grpc.StatusCode.OK:
        assert len(answer.jobs) <= min(req.page_size or 50, 1000)
        assert not req.state or all(j.state == req.state for j in answer.jobs)


def _watch(scoring, req):
    """The first event and, for a job that has ended, the rest of the stream (which must end)."""
    call = scoring.WatchJob(req, timeout=TIMEOUT_S)
    events = [next(call)]
    if events[0].event.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED):
        events += list(call)
    else:
        call.cancel()
    return events


@fuzz(150)
@given(req=requests(st.builds(spb.WatchJobRequest, job_id=pool("existing")), spb.WatchJobRequest.DESCRIPTOR))
def test_watch_job_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    code, events = check("WatchJob", req, lambda: _watch(scoring, req))
    if code == grpc.StatusCode.OK:
        assert len(events) == 1


@st.composite
def _uploads(draw) -> list:
    kind = draw(st.sampled_from(["npz", "txt", "bad_txt", "garbage", "bomb", "empty", "generic"]))
    name = draw(st.one_of(st.sampled_from(["a.npz", "a.txt", "", "a.TXT", "../../a.txt", "a.npz.txt"]), STRINGS))
    payload = {
        "npz": _npz(
            x_train=np.zeros((8, 4), np.float32),
            y_train=np.arange(8) % 2,
            x_test=np.zeros((4, 4), np.float32),
            y_test=np.arange(4) % 2,
        ),
        "txt": "some corpus text\n".encode() * draw(st.integers(1, 50)),
        "bad_txt": b"\xff\xfe\x00",
        "garbage": draw(_bytes()),
        "bomb": _claimed_shape_npz((10**9, FEATURES)),
        "empty": b"",
        "generic": b"",
    }[kind]
    if kind == "generic":
        return draw(st.lists(messages(spb.UploadDatasetRequest.DESCRIPTOR), max_size=4))
    cut = draw(st.integers(0, len(payload)))
    pieces = [payload[:cut], payload[cut:]] if draw(st.booleans()) else [payload]
    return [spb.UploadDatasetRequest(chunk=p, filename=name if i == 0 else "") for i, p in enumerate(pieces)]


@fuzz(250)
@given(reqs=_uploads())
def test_upload_dataset_answers_every_request_with_a_defined_status(deployment, reqs):
    scoring, _, _ = deployment
    bad = {"chunk"} if not any(r.chunk for r in reqs) else set()
    code, answer = check("UploadDataset", reqs, lambda: scoring.UploadDataset(iter(reqs), timeout=TIMEOUT_S), bad, True)
    if code == grpc.StatusCode.OK:
        data = b"".join(r.chunk for r in reqs)
        assert answer.size_bytes == len(data) and layout.is_dataset_key(answer.dataset_ref)
        assert answer.dataset_ref.endswith(".txt") == reqs[0].filename.endswith(".txt")


# -- calls that change jobs (after the read-only ones) ---------------------------------------


@fuzz(500)
@given(req=requests(SUBMIT, spb.SubmitJobRequest.DESCRIPTOR))
def test_submit_job_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    bad = {"request_id"} if _request_id_bad(req.request_id) else set()
    if not req.HasField("spec") or req.spec.WhichOneof("kind") is None:
        bad.add("spec")
    code, answer = check("SubmitJob", req, lambda: scoring.SubmitJob(req, timeout=TIMEOUT_S), bad, must_name=True)
    if code == grpc.StatusCode.OK and req.dry_run:  # the estimate only: no job
        assert not answer.HasField("job") and not answer.created and answer.estimate.shards >= 1
    elif code == grpc.StatusCode.OK:
        assert answer.job.state == job_pb2.JOB_STATE_QUEUED or not answer.created
        assert answer.job.spec.WhichOneof("kind") == req.spec.WhichOneof("kind")
        assert answer.estimate.shards == answer.job.progress.shards_total


@fuzz(150)
@given(req=requests(st.builds(spb.CancelJobRequest, job_id=pool("mutable_ids")), spb.CancelJobRequest.DESCRIPTOR))
def test_cancel_job_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    if req.job_id in POOL["protected"]:  # jobs the read-only fuzzing relies on stay as they are
        req.job_id = POOL["extendable"][0]
    code, answer = check("CancelJob", req, lambda: scoring.CancelJob(req, timeout=TIMEOUT_S))
    if code == grpc.StatusCode.OK:
        assert answer.job.state != job_pb2.JOB_STATE_QUEUED or answer.job.cancel_requested


@fuzz(200)
@given(
    req=requests(
        st.builds(
            spb.ExtendJobRequest,
            job_id=pool("extendable"),
            additional_models=st.sampled_from([2, 4]),
            request_id=st.sampled_from(["", "r1", "r2"]),
        ),
        spb.ExtendJobRequest.DESCRIPTOR,
    )
)
def test_extend_job_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    if req.job_id in POOL["protected"]:
        req.job_id = POOL["extendable"][1]
    bad = {"request_id"} if _request_id_bad(req.request_id) else set()
    if req.additional_models <= 0:
        bad.add("additional_models")
    check("ExtendJob", req, lambda: scoring.ExtendJob(req, timeout=TIMEOUT_S), bad, must_name="request_id" in bad)


@fuzz(100)
@given(
    req=requests(
        st.builds(
            spb.ListModelsRequest,
            feature_shape=st.lists(st.sampled_from([1, 3, 8, 16, 40, 512, 0, -1, 70_000]), max_size=5),
            num_classes=st.sampled_from([0, 1, 2, 10, 100_001, -3]),
        ),
        spb.ListModelsRequest.DESCRIPTOR,
    )
)
def test_list_models_answers_every_request_with_a_defined_status(deployment, req):
    scoring, _, _ = deployment
    shape = list(req.feature_shape)
    bad = set()
    if len(shape) > 4 or any(not 1 <= d <= 65_536 for d in shape) or math.prod(shape) > 1 << 26:
        bad.add("feature_shape")
    if req.num_classes == 1 or not 0 <= req.num_classes <= 100_000:
        bad.add("num_classes")
    code, answer = check(
        "ListModels", req, lambda: scoring.ListModels(req, timeout=TIMEOUT_S), bad, must_name=bool(bad)
    )
    if code == grpc.StatusCode.OK:
        names = [m.name for m in answer.models]
        assert {"mlp", "cnn1d", "resnet", "linear", "torchvision/resnet18"} <= set(names)
        for m in answer.models:
            assert (m.params > 0) != bool(m.problem), m


def test_the_servers_still_serve_after_the_fuzzing(deployment):
    _, _, channels = deployment
    for ch in channels:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = [spb.DESCRIPTOR.services_by_name["ScoringService"], rpb.DESCRIPTOR.services_by_name["ResultsService"]]
    rpcs = {m.name for s in services for m in s.methods}
    print("answers:", ", ".join(f"{rpc} {code} {n}" for (rpc, code), n in sorted(ANSWERS.items())))
    assert set(SENT) == rpcs, f"not fuzzed: {sorted(rpcs - set(SENT))}"
    assert sum(SENT.values()) >= MIN_REQUESTS, dict(SENT)
    assert min(SENT.values()) >= 90, dict(SENT)
