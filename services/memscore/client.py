"""A typed Python client for the Scoring and Results services.

    from memscore.client import Client
    with Client("localhost:50051", "localhost:50052") as c:
        job = c.submit_scoring(dataset="mnist1d", models=64)
        for event in c.watch(job.job_id): print(event.progress.models_done)
        top = c.ranked(job.job_id, metric="memorization", limit=20)

gRPC errors surface as `grpc.RpcError` with the server's status code and message; for
INVALID_ARGUMENT, `field_violations(err)` lists every bad field.

Credentials: `token` (sent as `authorization: Bearer ...` on every call), `tls_ca` (verify the
servers with this CA: TLS on), `tls_client_cert`/`tls_client_key` (mTLS) and `tls_server_name`
(the name the server certificate carries when it differs from the address). Each defaults to
its environment variable: MEMSCORE_TOKEN, MEMSCORE_TLS_CA, MEMSCORE_TLS_CLIENT_CERT,
MEMSCORE_TLS_CLIENT_KEY, MEMSCORE_TLS_SERVER_NAME.
"""

from __future__ import annotations

import os
from typing import Iterator

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .api.v1 import job_pb2
from .api.v1 import results_service_pb2 as rpb
from .api.v1 import results_service_pb2_grpc as rpb_grpc
from .api.v1 import scoring_service_pb2 as spb
from .api.v1 import scoring_service_pb2_grpc as spb_grpc
from .settings import env
from .tls import channel_credentials

UPLOAD_CHUNK = 1 << 20
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
MAX_MESSAGE_BYTES = 8 << 20


def field_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs of an INVALID_ARGUMENT error's BadRequest detail."""
    status = rpc_status.from_call(err)
    out = []
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            out += [(v.field, v.description) for v in br.field_violations]
    return out


def state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d):
        return d._replace(metadata=[*(d.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def open_channel(
    target: str,
    token: str | None = None,
    tls_ca: str | None = None,
    tls_client_cert: str | None = None,
    tls_client_key: str | None = None,
    tls_server_name: str | None = None,
    options: list | None = None,
) -> grpc.Channel:
    """A channel to `target` with the given credentials (None = the environment variable)."""
    token = env("MEMSCORE_TOKEN") if token is None else token
    creds = channel_credentials(
        env("MEMSCORE_TLS_CA") if tls_ca is None else tls_ca,
        env("MEMSCORE_TLS_CLIENT_CERT") if tls_client_cert is None else tls_client_cert,
        env("MEMSCORE_TLS_CLIENT_KEY") if tls_client_key is None else tls_client_key,
    )
    name = env("MEMSCORE_TLS_SERVER_NAME") if tls_server_name is None else tls_server_name
    opts = list(options or [])
    if name:
        opts.append(("grpc.ssl_target_name_override", name))
    channel = grpc.secure_channel(target, creds, options=opts) if creds else grpc.insecure_channel(target, options=opts)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


class Client:
    def __init__(
        self,
        gateway: str = "localhost:50051",
        results: str = "localhost:50052",
        timeout: float = 30.0,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        tls_server_name: str | None = None,
    ):
        opts = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        creds = dict(
            token=token,
            tls_ca=tls_ca,
            tls_client_cert=tls_client_cert,
            tls_client_key=tls_client_key,
            tls_server_name=tls_server_name,
        )
        self._gw_channel = open_channel(gateway, options=opts, **creds)
        self._res_channel = open_channel(results, options=opts, **creds)
        self.scoring = spb_grpc.ScoringServiceStub(self._gw_channel)
        self.results = rpb_grpc.ResultsServiceStub(self._res_channel)
        self.timeout = timeout

    def close(self) -> None:
        self._gw_channel.close()
        self._res_channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, spec: job_pb2.JobSpec, request_id: str = "", dry_run: bool = False):
        """The job (QUEUED, or the earlier one `request_id` made). With `dry_run`: the spec is
        validated and sized exactly as for a real submit, and its `JobEstimate` is returned
        instead; nothing is stored or queued. `submit_response` has both for a real submit."""
        r = self.submit_response(spec, request_id, dry_run)
        return r.estimate if dry_run else r.job

    def submit_response(
        self, spec: job_pb2.JobSpec, request_id: str = "", dry_run: bool = False
    ) -> spb.SubmitJobResponse:
        req = spb.SubmitJobRequest(spec=spec, request_id=request_id, dry_run=dry_run)
        return self.scoring.SubmitJob(req, timeout=self.timeout)

    def submit_scoring(self, request_id: str = "", dry_run: bool = False, **fields):
        """Fields of `memscore.v1.ScoringSpec` (same names as `engine.spec.ScoringSpec`); with
        `dry_run`, the JobEstimate (see `submit`)."""
        return self.submit(job_pb2.JobSpec(scoring=job_pb2.ScoringSpec(**fields)), request_id, dry_run)

    def submit_exposure(self, request_id: str = "", dry_run: bool = False, **fields):
        return self.submit(job_pb2.JobSpec(exposure=job_pb2.ExposureSpec(**fields)), request_id, dry_run)

    def get(self, job_id: str) -> job_pb2.Job:
        return self.scoring.GetJob(spb.GetJobRequest(job_id=job_id), timeout=self.timeout).job

    def list(self, state: int = 0, page_size: int = 50, page_token: str = "") -> tuple[list[job_pb2.Job], str]:
        r = self.scoring.ListJobs(
            spb.ListJobsRequest(state=state, page_size=page_size, page_token=page_token), timeout=self.timeout
        )
        return list(r.jobs), r.next_page_token

    def cancel(self, job_id: str) -> job_pb2.Job:
        return self.scoring.CancelJob(spb.CancelJobRequest(job_id=job_id), timeout=self.timeout).job

    def extend(self, job_id: str, additional_models: int, request_id: str = "") -> job_pb2.Job:
        """Add models to a SUCCEEDED scoring job; a retry with the same `request_id` extends once."""
        req = spb.ExtendJobRequest(job_id=job_id, additional_models=additional_models, request_id=request_id)
        return self.scoring.ExtendJob(req, timeout=self.timeout).job

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[job_pb2.JobEvent]:
        """Progress events until the job is terminal (the stream then ends)."""
        for r in self.scoring.WatchJob(spb.WatchJobRequest(job_id=job_id), timeout=timeout):
            yield r.event

    def wait(self, job_id: str, timeout: float | None = None) -> job_pb2.Job:
        for _ in self.watch(job_id, timeout):
            pass
        return self.get(job_id)

    def upload(self, path: str | os.PathLike) -> spb.UploadDatasetResponse:
        """Upload a dataset .npz (or a .txt corpus); returns its dataset_ref (datasets/<sha256>.npz)."""
        name = os.path.basename(str(path))

        def requests():
            with open(path, "rb") as f:
                first = True
                while True:
                    chunk = f.read(UPLOAD_CHUNK)
                    if not chunk and not first:
                        return
                    yield spb.UploadDatasetRequest(chunk=chunk, filename=name if first else "")
                    first = False
                    if not chunk:
                        return

        return self.scoring.UploadDataset(requests(), timeout=max(self.timeout, 600))

    # -- results ---------------------------------------------------------------------------
    def ranked_pages(
        self,
        job_id: str,
        metric: str = "memorization",
        ascending: bool = False,
        classes=(),
        min_score: float | None = None,
        max_score: float | None = None,
        limit: int = 0,
        page_size: int = 500,
    ) -> Iterator[rpb.StreamRankedResponse]:
        """Every page of a ranking, following page tokens."""
        token = ""
        while True:
            req = rpb.StreamRankedRequest(
                job_id=job_id,
                metric=metric,
                classes=list(classes),
                limit=limit,
                page_size=page_size,
                page_token=token,
                order=rpb.SORT_ORDER_ASCENDING if ascending else rpb.SORT_ORDER_DESCENDING,
            )
            if min_score is not None:
                req.min_score = min_score
            if max_score is not None:
                req.max_score = max_score
            token = ""
            for msg in self.results.StreamRanked(req, timeout=self.timeout):
                yield msg
                token = msg.next_page_token or token
            if not token:
                return

    def ranked(self, job_id: str, metric: str = "memorization", limit: int = 20, **kw) -> list[rpb.RankedExample]:
        return [e for page in self.ranked_pages(job_id, metric, limit=limit, **kw) for e in page.examples]

    def example(self, job_id: str, index: int) -> rpb.GetExampleResponse:
        return self.results.GetExample(rpb.GetExampleRequest(job_id=job_id, index=index), timeout=self.timeout)

    def influence(
        self, job_id: str, test_index: int | None = None, limit: int = 100, significant_only: bool = False
    ) -> list[rpb.InfluencePair]:
        """Global pairs above the threshold, or test example `test_index`'s top-k; significant_only:
        only pairs significant at the job's false discovery rate (InfluencePair.significant)."""
        req = rpb.StreamInfluenceRequest(job_id=job_id, limit=limit, significant_only=significant_only)
        if test_index is not None:
            req.test_index = test_index
        return [p for msg in self.results.StreamInfluence(req, timeout=self.timeout) for p in msg.pairs]

    def artifact(self, job_id: str, name: str) -> bytes:
        return b"".join(
            m.chunk
            for m in self.results.GetArtifact(rpb.GetArtifactRequest(job_id=job_id, name=name), timeout=self.timeout)
        )

    def exposure(self, job_id: str) -> rpb.GetExposureResponse:
        return self.results.GetExposure(rpb.GetExposureRequest(job_id=job_id), timeout=self.timeout)

    # -- models ----------------------------------------------------------------------------
    def list_models(self, feature_shape: tuple[int, ...] = (), num_classes: int = 0) -> list[spb.ModelInfo]:
        """The models the deployment trains, with parameter counts for `feature_shape` (empty =
        each model's reference shape) and `num_classes` (0 = 10)."""
        req = spb.ListModelsRequest(feature_shape=list(feature_shape), num_classes=num_classes)
        return list(self.scoring.ListModels(req, timeout=self.timeout).models)
