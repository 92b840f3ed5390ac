import json

import pyarrow.parquet as pq
import pytest
import torch

from memscore.cli import main

TINY = ["--steps", "10", "--hidden", "32", "--layers", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus_file(tmp_path):
    from memscore.engine.corpus import load_corpus

    path = tmp_path / "corpus.txt"
    path.write_text(load_corpus("builtin")[:3000], encoding="utf-8")
    return path


def test_exposure_writes_parquet_and_summary_and_prints_a_table(tmp_path, corpus_file, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "exposure",
            "--corpus",
            str(corpus_file),
            "--canary",
            "the pin is {dd}",
            "--canary",
            "id {a}",
            "--insertions",
            "0,1,4",
            "--seed",
            "2",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    table = pq.read_table(out / "exposure.parquet").to_pylist()
    assert [(r["format"], r["insertions"]) for r in table] == [
        ("the pin is {dd}", 0),
        ("the pin is {dd}", 1),
        ("the pin is {dd}", 4),
        ("id {a}", 0),
        ("id {a}", 1),
        ("id {a}", 4),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["spec"]["canaries"] == ["the pin is {dd}", "id {a}"] and summary["spec"]["seed"] == 2
    assert summary["corpus"]["source"] == str(corpus_file) and summary["model"]["steps"] == 10
    printed = capsys.readouterr().out
    assert "the pin is {dd}  (|R| = 100" in printed and "id {a}  (|R| = 26" in printed
    assert "exposure" in printed and "extracted?" in printed and "exposure.parquet" in printed


def test_exposure_defaults_to_the_builtin_corpus(tmp_path):
    out = tmp_path / "out"
    assert main(["exposure", "--canary", "pin {d}", "--insertions", "0,3", "--out", str(out), *TINY]) == 0
    assert json.loads((out / "summary.json").read_text())["corpus"]["source"] == "builtin"


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--canary", "ok {dd}", "--canary", "the pin is {dxd}"],
            "--canary #2: canary format 'the pin is {dxd}': unknown placeholder",
        ),
        (["--canary", "no slot"], "--canary #1: canary format 'no slot' has no slot"),
        (["--insertions", "0,1,x"], "--insertions: expected comma-separated whole numbers"),
        (["--insertions", "0,-4"], "--insertions: each count must be between 0 and 100000"),
        (["--model", "gru"], "--model: unknown model 'gru'"),
    ],
)
def test_bad_requests_exit_2_with_a_message_and_write_nothing(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    assert main(["exposure", *args, "--out", str(out), *TINY]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_or_missing_corpus_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["exposure", "--corpus", str(empty), "--canary", "pin {dd}", "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "error: --corpus: corpus file" in err and "is empty" in err
    assert main(["exposure", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "neither 'builtin' nor an existing text file" in capsys.readouterr().err
