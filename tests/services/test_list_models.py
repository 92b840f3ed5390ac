"""ListModels and `memscore models`: every model a spec may name, with parameter counts that
match the models the trainer builds, bounded requests, and the same listing through the RPC."""

from __future__ import annotations

import grpc
import pytest

from memscore.cli import main
from memscore.dataplane.models import list_models
from memscore.engine.models import build_model, count_params
from memscore.engine.registry import REFERENCE_SHAPES
from memscore.errors import InvalidArgument


def _by_name(rows) -> dict:
    return {r["name"]: r for r in rows}


def test_the_listing_counts_the_parameters_of_the_models_the_trainer_builds():
    rows = _by_name(list_models())
    for name, kind in (("mlp", "vector"), ("linear", "vector"), ("cnn1d", "sequence"), ("resnet", "image")):
        shape = REFERENCE_SHAPES[kind]
        assert rows[name]["feature_shape"] == shape and rows[name]["source"] == "builtin"
        assert rows[name]["params"] == count_params(build_model(name, shape, 10)), name
    resnet18 = rows["torchvision/resnet18"]
    assert resnet18["source"] == "torchvision" and resnet18["problem"] == ""
    assert 11_000_000 < resnet18["params"] < 11_300_000  # torchvision's resnet18 at 10 classes: 11.2 M


def test_a_requested_shape_says_which_models_do_not_take_it():
    rows = _by_name(list_models((3, 16, 16), 5))
    assert rows["linear"]["params"] == 3 * 16 * 16 * 5 + 5
    assert "cnn1d takes" in rows["cnn1d"]["problem"] and rows["cnn1d"]["params"] == 0
    vectors = _by_name(list_models((64,), 2))
    assert "takes (c, h, w) images" in vectors["torchvision/resnet18"]["problem"]
    assert vectors["mlp"]["params"] == count_params(build_model("mlp", (64,), 2))


def test_a_huge_shape_is_counted_without_building_its_weights():
    rows = _by_name(list_models((4096, 4096), 10))  # an MLP of 4.3 G parameters: 17 GB if it were built
    assert rows["mlp"]["params"] == 4096 * 4096 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10


@pytest.mark.parametrize(
    "shape,classes,field",
    [((0,), 10, "feature_shape"), ((1, 2, 3, 4, 5), 10, "feature_shape"), ((70_000,), 10, "feature_shape"),
     ((8192, 8192, 3), 10, "feature_shape"), ((8,), 1, "num_classes"), ((8,), 200_000, "num_classes")],
)  # fmt: skip
def test_out_of_bounds_requests_are_invalid_argument_naming_the_field(shape, classes, field):
    with pytest.raises(InvalidArgument) as e:
        list_models(shape, classes)
    assert [f for f, _ in e.value.violations] == [field]


def test_memscore_models_prints_the_table(capsys):
    assert main(["models", "--shape", "3,32,32", "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "torchvision/resnet18" in out and "11,173,962" in out


def test_memscore_models_refuses_a_bad_shape(capsys):
    assert main(["models", "--shape", "0"]) == 1
    assert "feature_shape" in capsys.readouterr().err


@pytest.mark.integration
def test_list_models_over_grpc_matches_the_local_listing(start, capsys):
    from memscore.api.v1 import scoring_service_pb2 as spb
    from memscore.api.v1 import scoring_service_pb2_grpc as spb_grpc

    _, address = start()
    with grpc.insecure_channel(address) as ch:
        stub = spb_grpc.ScoringServiceStub(ch)
        reply = stub.ListModels(spb.ListModelsRequest(feature_shape=[512], num_classes=10), timeout=60)
        local = _by_name(list_models((512,), 10))
        assert {m.name: m.params for m in reply.models} == {n: r["params"] for n, r in local.items()}
        with pytest.raises(grpc.RpcError) as e:
            stub.ListModels(spb.ListModelsRequest(feature_shape=[-1]), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert main(["models", "--gateway", address, "--shape", "512", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name,source,params,feature_shape,input,problem"
    assert any(line.startswith(f"mlp,builtin,{local['mlp']['params']},512,") for line in lines)
