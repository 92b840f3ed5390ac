"""The Results service: ranked examples, influence pairs, artifacts and exposure results from
stored results, or anytime estimates from the shards done so far. A thin translation of
protobuf to `dataplane.ResultsPlane`."""

from __future__ import annotations

import logging
import math
import sys

from ..api.v1 import results_service_pb2 as pb
from ..api.v1 import results_service_pb2_grpc as pb_grpc
from ..dataplane import ResultsPlane
from ..engine.catalog import SCORE_COLUMNS
from ..errors import InvalidArgument
from ..metrics import serve_metrics
from ..rpc import run_until_signalled, start_service
from ..runtime import Runtime, runtime

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ResultsService"].full_name
BATCH = 500  # influence pairs per streamed message: well under the 4 MiB default message limit
ARTIFACT_CHUNK = 1 << 20

_EXAMPLE_FIELDS = (*SCORE_COLUMNS, "rank")


def _example(row: dict) -> pb.RankedExample:
    return pb.RankedExample(**{f: row[f] for f in _EXAMPLE_FIELDS})


def _pair(row: dict) -> pb.InfluencePair:
    return pb.InfluencePair(
        train_index=row["train_index"],
        test_index=row["test_index"],
        influence=row["influence"],
        train_label=row["train_label"],
        test_label=row["test_label"],
        influence_stderr=row.get("influence_stderr", math.nan),
        significant=bool(row.get("significant", False)),
        influence_pvalue=row.get("influence_pvalue", math.nan),
    )


class ResultsServicer(pb_grpc.ResultsServiceServicer):
    def __init__(self, plane: ResultsPlane):
        self.plane = plane

    def StreamRanked(self, request, context):
        if request.order not in pb.SortOrder.values():  # a number no SortOrder has
            raise InvalidArgument([("order", f"unknown SortOrder {request.order}; 0 (unspecified) = descending")])
        pages = self.plane.ranked(
            request.job_id,
            metric=request.metric or "memorization",
            descending=request.order != pb.SORT_ORDER_ASCENDING,
            classes=list(request.classes),
            min_score=request.min_score if request.HasField("min_score") else None,
            max_score=request.max_score if request.HasField("max_score") else None,
            limit=request.limit,
            page_size=request.page_size,
            page_token=request.page_token,
            tenant=context.tenant,
        )
        for page in pages:  # one message per page (at most MAX_PAGE examples, ~0.1 MB), one snapshot
            if not context.is_active():
                return
            yield pb.StreamRankedResponse(
                examples=[_example(r) for r in page.rows],
                next_page_token=page.next_page_token,
                final=page.final,
                models=page.models,
            )

    def GetExample(self, request, context):
        row, final = self.plane.example(request.job_id, request.index, tenant=context.tenant)
        pairs = self.plane.influence_of_train(request.job_id, request.index, tenant=context.tenant) if final else []
        return pb.GetExampleResponse(example=_example(row), final=final, influence=[_pair(r) for r in pairs])

    def StreamInfluence(self, request, context):
        test_index = request.test_index if request.HasField("test_index") else None
        rows = self.plane.influence(
            request.job_id, test_index, request.limit or 100, request.significant_only, tenant=context.tenant
        )
        for a in range(0, max(len(rows), 1), BATCH):
            yield pb.StreamInfluenceResponse(pairs=[_pair(r) for r in rows[a : a + BATCH]])

    def GetArtifact(self, request, context):
        if not request.name:
            raise InvalidArgument([("name", "is required, e.g. scores.parquet")])
        url, chunks, size = self.plane.artifact(request.job_id, request.name, tenant=context.tenant)
        yield pb.GetArtifactResponse(presigned_url=url, size_bytes=size)
        for chunk in chunks:
            yield pb.GetArtifactResponse(chunk=chunk)

    def QueryInfluence(self, request, context):
        rows = self.plane.query_influence(
            request.job_id, request.examples_npz, request.top_k or 10, tenant=context.tenant
        )
        return pb.QueryInfluenceResponse(pairs=[_pair(r) for r in rows])

    def GetExposure(self, request, context):
        rows, summary = self.plane.exposure(request.job_id, tenant=context.tenant)
        return pb.GetExposureResponse(
            canaries=[
                pb.CanaryExposure(
                    format=r["format"],
                    canary=r["canary"],
                    insertions=int(r["insertions"]),
                    exposure=float(r["exposure"]),
                    rank=float(r["rank"]),
                    rank_exact=bool(r["rank_exact"]),
                    log_perplexity=float(r["log_perplexity"]),
                    extracted=bool(r.get("extracted_greedy", False) or r.get("extracted_beam", False)),
                    space_bits=float(math.log2(r["space_size"])) if r.get("space_size") else 0.0,
                )
                for r in rows
            ],
            test_log_perplexity=float(summary.get("test_log_perplexity") or 0.0),
        )


def serve(rt: Runtime, address: str, plane: ResultsPlane | None = None):
    servicer = ResultsServicer(plane or ResultsPlane(rt))
    return start_service(lambda s: pb_grpc.add_ResultsServiceServicer_to_server(servicer, s), SERVICE_NAME, address, rt)


def main(argv: list[str] | None = None) -> int:
    """`memscore-results`: serve ResultsService on MEMSCORE_BIND:MEMSCORE_RESULTS_PORT."""
    from ..logs import configure_logging

    rt = runtime()
    configure_logging(rt.settings)
    try:
        server, port = serve(rt, f"{rt.settings.bind}:{rt.settings.results_port}")
    except RuntimeError as e:  # no tokens on a public address, TLS files that do not load
        logging.getLogger("memscore.rpc").error("%s", e)
        return 2
    logging.getLogger("memscore.results").info("ResultsService on port %d", port)
    serve_metrics(rt.settings)
    run_until_signalled([server])
    return 0


if __name__ == "__main__":
    sys.exit(main())
