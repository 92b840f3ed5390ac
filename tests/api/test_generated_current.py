"""The public API stays lint-clean, formatted, and in step with its generated Python code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _buf() -> str:
    path = shutil.which("buf", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        pytest.fail("buf is not installed (pip install buf-bin, a dev dependency)", pytrace=False)
    return path


def test_generated_code_is_current():
    proc = subprocess.run([sys.executable, "scripts/gen_api.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_buf_lint_passes():
    proc = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_protos_are_buf_formatted():
    proc = subprocess.run([_buf(), "format", "--diff", "--exit-code"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, "run `.venv/bin/buf format -w`:\n" + proc.stdout + proc.stderr


def test_generated_modules_import_under_memscore_api():
    from memscore.api.v1 import job_pb2, results_service_pb2, results_service_pb2_grpc, scoring_service_pb2_grpc

    assert job_pb2.DESCRIPTOR.name == "memscore/v1/job.proto" and job_pb2.DESCRIPTOR.package == "memscore.v1"
    assert job_pb2.Job.__module__ == "memscore.api.v1.job_pb2"
    assert scoring_service_pb2_grpc.ScoringServiceStub and results_service_pb2_grpc.ResultsServiceStub
    assert results_service_pb2.StreamRankedRequest.DESCRIPTOR.fields_by_name["min_score"].has_presence


def test_reflection_describes_both_services():
    """What grpcurl relies on: the servers' reflection can resolve every service and its imports."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha import reflection
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from memscore.api.v1 import results_service_pb2, scoring_service_pb2

    names = (
        scoring_service_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name,
        results_service_pb2.DESCRIPTOR.services_by_name["ResultsService"].full_name,
        reflection.SERVICE_NAME,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            assert set(db.get_services()) >= {"memscore.v1.ScoringService", "memscore.v1.ResultsService"}
            pool = DescriptorPool(db)
            submit = pool.FindServiceByName("memscore.v1.ScoringService").methods_by_name["SubmitJob"]
            assert submit.input_type.fields_by_name["spec"].message_type.full_name == "memscore.v1.JobSpec"
            ranked = pool.FindServiceByName("memscore.v1.ResultsService").methods_by_name["StreamRanked"]
            assert ranked.server_streaming and ranked.output_type.name == "StreamRankedResponse"
    finally:
        server.stop(None)


def test_check_names_the_stale_file(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "scripts" / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    fresh = gen_api.committed()
    fresh["v1/job_pb2.py"] += "# changed\n"
    fresh["v1/new_pb2.py"] = ""
    assert gen_api.check(fresh) == 1
    err = capsys.readouterr().err
    assert "stale: services/memscore/api/v1/job_pb2.py" in err and "missing: services/memscore/api/v1/new_pb2.py" in err
