"""`memscore run`: the embedded main job writes the three result files, reproducibly."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from memscore.cli import main

from .services.conftest import write_blobs_npz

SCORE_COLUMNS = [
    "index",
    "label",
    "memorization",
    "memorization_stderr",
    "memorization_soft",
    "in_sample_accuracy",
    "heldout_accuracy",
    "n_in",
    "n_out",
]


def run(tmp_path, name, *extra):
    data = write_blobs_npz(tmp_path / "blobs.npz")
    out = tmp_path / name
    code = main(
        [
            "run",
            "--dataset",
            str(data),
            "--model",
            "mlp",
            "--models",
            "6",
            "--epochs",
            "3",
            "--seed",
            "4",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    return code, out


def test_run_writes_scores_influence_and_summary_identically_for_the_same_seed(tmp_path, capsys):
    code, a = run(tmp_path, "a")
    assert code == 0
    printed = capsys.readouterr().out
    assert "most memorized" in printed
    scores = pq.read_table(a / "scores.parquet")
    assert set(SCORE_COLUMNS) <= set(scores.column_names) and scores.num_rows == 240
    infl = pq.read_table(a / "influence.parquet")
    assert {"train_index", "test_index", "influence"} <= set(infl.column_names)
    assert infl.num_rows >= 80 * 10  # top-10 per test example at least
    summary = json.loads((a / "summary.json").read_text())
    for key in (
        "spec",
        "mean_test_accuracy",
        "memorization_histogram",
        "fraction_memorization_ge",
        "mean_in_sample_accuracy",
        "mean_heldout_accuracy",
        "timings",
    ):
        assert key in summary
    assert summary["fraction_memorization_ge"].keys() == {"0.25", "0.5"}
    assert sum(summary["memorization_histogram"]["counts"]) + summary["examples_without_estimate"] == 240

    code, b = run(tmp_path, "b")
    assert code == 0
    for name in ("scores.parquet", "influence.parquet"):  # byte for byte
        assert (b / name).read_bytes() == (a / name).read_bytes()
    strip = lambda s: {k: v for k, v in s.items() if k != "timings"}  # noqa: E731
    assert strip(json.loads((b / "summary.json").read_text())) == strip(summary)
    code, c = run(tmp_path, "c", "--seed", "5")
    assert not np.array_equal(
        pq.read_table(c / "scores.parquet").column("n_in").to_numpy(), scores.column("n_in").to_numpy()
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope"], "neither a built-in"),
        (["--dataset", "mnist1d", "--ratio", "1.2"], "--ratio"),
        (["--dataset", "mnist1d", "--models", "1"], "--models"),
        (["--dataset", "mnist1d", "--model", "vgg"], "--model"),
        (["--dataset", "mnist1d", "--model", "resnet"], "--model: resnet takes (c, h, w) images"),
        (["--dataset", "mnist1d", "--model", "torchvision/resnet18"], "--model: torchvision/resnet18 takes (c, h, w)"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(tmp_path, capsys, args, message):
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_bad_dataset_file_exits_2_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(
        bad,
        x_train=np.zeros((5, 3), np.float32),
        y_train=np.array([0, 1, 0, 1, -1]),
        x_test=np.zeros((2, 3), np.float32),
        y_test=np.array([0, 1]),
    )
    assert main(["run", "--dataset", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "-1" in capsys.readouterr().err


def test_run_writes_heldout_probs_that_cleanlab_accepts_and_flags_flipped_labels(tmp_path):
    """heldout_probs.npy: n × C rows in training order, each the mean distribution of the models
    that held the example out, as cleanlab's find_label_issues(labels, pred_probs) takes it; the
    label_quality column is its probability of the given label."""
    from cleanlab.filter import find_label_issues

    code, out = run(tmp_path, "noisy", "--label-noise", "0.1", "--models", "8")
    assert code == 0
    probs = np.load(out / "heldout_probs.npy")
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert probs.shape == (240, 4) and probs.dtype == np.float32  # write_blobs_npz: 4 classes
    known = scores["n_out"].to_numpy() > 0
    np.testing.assert_allclose(probs[known].sum(1), 1.0, atol=1e-4)
    labels = scores["label"].to_numpy()
    np.testing.assert_allclose(scores["label_quality"].to_numpy()[known], probs[known, labels[known]], rtol=1e-6)
    assert (scores["predicted_label_heldout"].to_numpy()[known] == probs[known].argmax(1)).all()
    issues = find_label_issues(labels[known], probs[known])
    flipped = scores["label_flipped"].to_numpy()[known]
    assert flipped[issues].mean() > 3 * flipped.mean()  # cleanlab's picks are mostly the flipped ones
    quality = scores["label_quality"].to_numpy()[known]
    assert quality[flipped].mean() < quality[~flipped].mean() - 0.2


def test_run_until_reliability_reports_reliability_and_why_it_stopped(tmp_path, capsys, torch_one_thread):
    out = tmp_path / "grown"
    flags = ["--dataset", "mnist1d", "--model", "mlp", "--models", "4", "--shard-size", "2", "--epochs", "3"]
    flags += ["--seed", "1", "--until-reliability", "0.9", "--max-models", "8", "--out", str(out), "--quiet"]
    assert main(["run", *flags]) == 0
    printed = capsys.readouterr().out
    assert "reliability (split-half, Spearman-Brown): memorization " in printed
    assert "stopped at 8 models (max_models)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_because"] == "max_models" and summary["spec"]["models"] == 8
    for metric in ("memorization", "memorization_soft"):
        assert {"split_half_spearman", "spearman_brown", "models_for_0_95"} <= set(summary["reliability"][metric])
    bad = ["run", "--dataset", "mnist1d", "--models", "100", "--until-reliability", "0.9", "--max-models", "200"]
    assert main([*bad, "--out", str(out), "--quiet"]) == 2
    assert "--models: a self-stopping job grows by whole shards" in capsys.readouterr().err


def write_blobs_parquet(path, n: int = 60, m: int = 20, d: int = 8) -> "np.ndarray":
    """The blobs as a Parquet table with a user's own column names and string labels; returns
    the training features in row order."""
    import pyarrow as pa

    blobs = np.load(write_blobs_npz(path.with_suffix(".npz"), n=n, m=m, d=d, classes=3))
    x = np.concatenate([blobs["x_train"], blobs["x_test"]])
    y = np.array(["ant", "bee", "cat"])[np.concatenate([blobs["y_train"], blobs["y_test"]])]
    role = ["train"] * n + ["test"] * m
    pq.write_table(pa.table({"vec": pa.array(list(x), pa.list_(pa.float32())), "kind": y, "part": role}), path)
    return blobs["x_train"]


def test_run_scores_a_parquet_table_with_the_column_flags(tmp_path, capsys, torch_one_thread):
    x_train = write_blobs_parquet(tmp_path / "table.parquet")
    flags = ["--feature-column", "vec", "--label-column", "kind", "--split-column", "part"]
    out = tmp_path / "o"
    args = ["run", "--dataset", str(tmp_path / "table.parquet"), "--models", "4", "--epochs", "1"]
    assert main([*args, *flags, "--out", str(out), "--quiet"]) == 0
    assert "table: 60 train / 20 test" in capsys.readouterr().out
    scores = pq.read_table(out / "scores.parquet")
    assert scores.num_rows == len(x_train) == 60
    assert set(scores.column("label").to_pylist()) == {0, 1, 2}  # ant, bee, cat in sorted order
    assert main([*args, "--out", str(out), "--quiet"]) == 2  # default columns: the table has none of them
    err = capsys.readouterr().err
    assert "column 'label'" in err and "vec, kind, part" in err


def test_run_reads_an_s3_table_with_the_users_own_credentials(tmp_path, capsys, clean_env, s3_endpoint, s3_bucket):
    from memscore.store.objects import S3ObjectStore

    from .conftest import S3_ACCESS_KEY, S3_SECRET_KEY

    write_blobs_parquet(tmp_path / "table.parquet")
    S3ObjectStore(s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, s3_bucket).put_file(
        "t/blobs.parquet", tmp_path / "table.parquet"
    )
    args = ["run", "--dataset", f"s3://{s3_bucket}/t/blobs.parquet", "--models", "2", "--epochs", "1", "--quiet"]
    args += [
        "--feature-column",
        "vec",
        "--label-column",
        "kind",
        "--split-column",
        "part",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2  # no endpoint configured: said so
    assert "MEMSCORE_S3_ENDPOINT" in capsys.readouterr().err
    for name, value in (("ENDPOINT", s3_endpoint), ("ACCESS_KEY", S3_ACCESS_KEY), ("SECRET_KEY", S3_SECRET_KEY)):
        clean_env.setenv(f"MEMSCORE_S3_{name}", value)
    assert main(args) == 0
    assert "blobs: 60 train / 20 test" in capsys.readouterr().out
