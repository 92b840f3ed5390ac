"""The Scoring service: validate, persist, enqueue, report progress. A thin translation of
protobuf to `dataplane.ScoringPlane`; errors become status codes in
`interceptors.DomainErrorInterceptor`. Plain methods run on the server's thread pool; WatchJob
and UploadDataset are async, so a stream waiting on a job or on its client holds no thread."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys

from ..api.v1 import scoring_service_pb2 as pb
from ..api.v1 import scoring_service_pb2_grpc as pb_grpc
from ..convert import PB_TO_STATE, event_to_pb, job_to_pb, spec_from_pb
from ..dataplane import ScoringPlane
from ..dataplane.models import list_models
from ..errors import InvalidArgument
from ..interceptors import in_pool
from ..metrics import REGISTRY, Registry, serve_metrics
from ..rpc import run_until_signalled, start_service
from ..runtime import Runtime, runtime

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    def __init__(self, plane: ScoringPlane):
        self.plane = plane

    def SubmitJob(self, request, context):
        kind, spec = spec_from_pb(request.spec)
        done = self.plane.submit_job(kind, spec, request.request_id, context.tenant, request.dry_run)
        estimate = pb.JobEstimate(**dataclasses.asdict(done.estimate))
        if done.job is None:  # a dry run: the estimate only
            return pb.SubmitJobResponse(estimate=estimate)
        return pb.SubmitJobResponse(job=job_to_pb(done.job), created=done.created, estimate=estimate)

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

    async def WatchJob(self, request, context):
        """The job now, then at every change until it ends: waits on the plane's change feed,
        holding no thread between events."""
        rec = await in_pool(self.plane.get, request.job_id, context.tenant)
        yield pb.WatchJobResponse(event=event_to_pb(rec))
        while not rec.terminal:
            changed = await self._next_change(request.job_id, rec.version)
            rec = await in_pool(self.plane.watch_step, rec, changed)
            yield pb.WatchJobResponse(event=event_to_pb(rec))

    async def _next_change(self, job_id: str, version: int):
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(rec, error) -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(rec)

        def deliver(rec, error) -> None:  # on the feed's thread
            try:
                loop.call_soon_threadsafe(settle, rec, error)
            except RuntimeError:  # the server and its loop have stopped
                pass

        unsubscribe = self.plane.changes.subscribe(job_id, version, deliver)
        try:
            return await future
        finally:
            unsubscribe()

    async def UploadDataset(self, request_iterator, context):
        """Chunks are spooled as they come (each write on the pool), so a slow client holds no
        thread between chunks; the filename arrives with the first message."""
        upload = await in_pool(self.plane.start_upload, context.tenant)
        try:
            filename = None
            async for req in request_iterator:
                if filename is None:
                    filename = req.filename
                await in_pool(upload.write, req.chunk)
            if filename is None:
                raise InvalidArgument([("chunk", "the upload is empty")])
            info = await in_pool(upload.finish, filename)
        finally:
            upload.close()
        return pb.UploadDatasetResponse(
            dataset_ref=info["dataset_ref"], sha256=info["sha256"], size_bytes=info["size_bytes"]
        )

    def ExtendJob(self, request, context):
        rec = self.plane.extend(request.job_id, request.additional_models, request.request_id, tenant=context.tenant)
        return pb.ExtendJobResponse(job=job_to_pb(rec))

    def ListModels(self, request, context):
        models = list_models(tuple(request.feature_shape), request.num_classes)
        return pb.ListModelsResponse(models=[pb.ModelInfo(**m) for m in models])


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
