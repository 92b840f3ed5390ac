"""The Scoring service: validate, persist, enqueue, report progress. A thin translation of
protobuf to `dataplane.ScoringPlane`; errors become status codes in `rpc.DomainErrorInterceptor`."""

from __future__ import annotations

import logging
import sys

from ..api.v1 import scoring_service_pb2 as pb
from ..api.v1 import scoring_service_pb2_grpc as pb_grpc
from ..dataplane import ScoringPlane
from ..errors import InvalidArgument
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
    """Start (not block): returns (server, port)."""
    servicer = ScoringServicer(plane or ScoringPlane(rt))
    return start_service(lambda s: pb_grpc.add_ScoringServiceServicer_to_server(servicer, s), SERVICE_NAME, address, rt)


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
    run_until_signalled([server])
    return 0


if __name__ == "__main__":
    sys.exit(main())
