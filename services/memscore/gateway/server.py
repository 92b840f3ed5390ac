"""The Scoring service: validate, persist, enqueue, report progress. A thin translation of
protobuf to `dataplane.ScoringPlane`; errors become status codes in `rpc.DomainErrorInterceptor`."""

from __future__ import annotations

import logging
import sys

from ..api.v1 import scoring_service_pb2 as pb
from ..api.v1 import scoring_service_pb2_grpc as pb_grpc
from ..dataplane import ScoringPlane
from ..errors import InvalidArgument
from ..metrics import REGISTRY, Registry, serve_metrics
from ..rpc import PB_TO_STATE, event_to_pb, job_to_pb, run_until_signalled, spec_from_pb, start_service
from ..runtime import Runtime, runtime

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    def __init__(self, plane: ScoringPlane):
        self.plane = plane

    def SubmitJob(self, request, context):
        kind, spec = spec_from_pb(request.spec)
        rec, created = self.plane.submit(kind, spec, request.request_id, tenant=context.tenant)
        return pb.SubmitJobResponse(job=job_to_pb(rec), created=created)

    def GetJob(self, request, context):
        return pb.GetJobResponse(job=job_to_pb(self.plane.get(request.job_id, context.tenant)))

    def ListJobs(self, request, context):
        if request.state and request.state not in PB_TO_STATE:  # a number no JobState has
            raise InvalidArgument([("state", f"unknown JobState {request.state}; 0 (unspecified) = all states")])
        state = PB_TO_STATE.get(request.state) if request.state else None
        jobs, token = self.plane.list(state, request.page_size, request.page_token, tenant=context.tenant)
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs], next_page_token=token)

    def CancelJob(self, request, context):
        return pb.CancelJobResponse(job=job_to_pb(self.plane.cancel(request.job_id, context.tenant)))

    def WatchJob(self, request, context):
        for rec in self.plane.watch(request.job_id, is_active=context.is_active, tenant=context.tenant):
            yield pb.WatchJobResponse(event=event_to_pb(rec))

    def UploadDataset(self, request_iterator, context):
        first = {"filename": ""}

        def chunks():
            for i, req in enumerate(request_iterator):
                if i == 0:
                    first["filename"] = req.filename
                yield req.chunk

        it = chunks()
        try:
            head = next(it)
        except StopIteration:
            raise InvalidArgument([("chunk", "the upload is empty")]) from None

        def all_chunks():
            yield head
            yield from it

        # the filename arrives with the first message: read it before the plane needs it
        info = self.plane.upload(all_chunks(), filename=first["filename"], tenant=context.tenant)
        return pb.UploadDatasetResponse(
            dataset_ref=info["dataset_ref"], sha256=info["sha256"], size_bytes=info["size_bytes"]
        )

    def ExtendJob(self, request, context):
        rec = self.plane.extend(request.job_id, request.additional_models, request.request_id, tenant=context.tenant)
        return pb.ExtendJobResponse(job=job_to_pb(rec))


def serve(rt: Runtime, address: str, plane: ScoringPlane | None = None):
    """Start (not block): returns (server, port). The plane's watchdog sweeps for lost work
    until the server stops."""
    plane = plane or ScoringPlane(rt)
    servicer = ScoringServicer(plane)
    server, port = start_service(
        lambda s: pb_grpc.add_ScoringServiceServicer_to_server(servicer, s), SERVICE_NAME, address, rt
    )
    watchdog = plane.start_watchdog()
    if watchdog is not None:
        server_stop = server.stop

        def stop(grace):
            watchdog.set()
            return server_stop(grace)

        server.stop = stop
    return server, port


def register_metrics(rt: Runtime, registry: Registry = REGISTRY) -> None:
    """Gauges computed at each scrape: jobs by state (every tenant's) and messages waiting in
    the shard and reduce queues. A store or broker that cannot be reached leaves its gauge out
    of that scrape and sets memscore_backend_up{backend=...} to 0."""
    from ..broker import queue_depth

    up = registry.gauge("memscore_backend_up", "1 when the last scrape reached this backing service.", ("backend",))

    def reaching(backend: str, read):
        def fn():
            try:
                value = read()
            except Exception:
                up.set(0, backend=backend)
                raise
            up.set(1, backend=backend)
            return value

        return fn

    registry.gauge_callback(
        "memscore_jobs", "Jobs of every tenant by state.", ("state",), reaching("job_store", rt.jobs.count_by_state)
    )
    queues = (rt.settings.queue, rt.settings.reduce_queue)
    registry.gauge_callback(
        "memscore_queue_depth",
        "Tasks waiting in a broker queue (not those a worker has taken).",
        ("queue",),
        reaching("broker", lambda: {q: queue_depth(rt.celery, q) for q in queues}),
    )


def main(argv: list[str] | None = None) -> int:
    """`memscore-gateway`: serve ScoringService on MEMSCORE_BIND:MEMSCORE_GATEWAY_PORT."""
    from ..logs import configure_logging

    rt = runtime()
    configure_logging(rt.settings)
    try:
        server, port = serve(rt, f"{rt.settings.bind}:{rt.settings.gateway_port}")
    except RuntimeError as e:  # no tokens on a public address, TLS files that do not load
        logging.getLogger("memscore.rpc").error("%s", e)
        return 2
    logging.getLogger("memscore.gateway").info(
        "ScoringService on port %d, store %s, jobs %s", port, rt.objects.describe(), rt.jobs.describe()
    )
    register_metrics(rt)
    serve_metrics(rt.settings)
    run_until_signalled([server])
    return 0


if __name__ == "__main__":
    sys.exit(main())
