"""`memscore report`: a real (tiny) run written as `memscore run` writes it, turned into an HTML
page, and that page opened in headless Chromium to check what a reader would see."""

from __future__ import annotations

import io
import json
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from memscore.cli import main
from memscore.engine.datasets import load_digits_dataset, load_mnist1d
from memscore.engine.scoring import run_scoring
from memscore.engine.spec import ScoringSpec
from memscore.report import load_dataset_for_report, read_result_files, render_report

CHROMIUM = os.environ.get("MEMSCORE_CHROMIUM", "/usr/bin/chromium")


class _Grids(HTMLParser):
    """Counts <img> elements inside each `class-grid` div, and all data-URI images."""

    def __init__(self):
        super().__init__()
        self.grids: dict[str, int] = {}
        self.stack: list[str | None] = []  # the class-grid id each open div belongs to
        self.data_images = 0
        self.body_attrs: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body_attrs = {k: v or "" for k, v in attrs}
        if tag == "div":
            current = self.stack[-1] if self.stack else None
            if "class-grid" in (a.get("class") or "").split():
                current = a.get("id")
                self.grids[current] = 0
            self.stack.append(current)
        if tag == "img":
            if (a.get("src") or "").startswith("data:image/png;base64,"):
                self.data_images += 1
            if self.stack and self.stack[-1] is not None:
                self.grids[self.stack[-1]] += 1

    def handle_endtag(self, tag):
        if tag == "div" and self.stack:
            self.stack.pop()


def _parse(page: str) -> _Grids:
    p = _Grids()
    p.feed(page)
    return p


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install it (scripts/setup.sh does: apt-get install -y chromium) "
            "to render the report headless",
            pytrace=False,
        )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A run directory as `memscore run --out` writes it: digits, 8 MLPs, 10% label noise."""
    out = tmp_path_factory.mktemp("run")
    spec = ScoringSpec(dataset="digits", model="mlp", models=8, epochs=4, seed=3, label_noise=0.1, influence_top_k=5)
    result = run_scoring(load_digits_dataset(), spec, device="cpu")
    for name, data in result.to_files().items():
        (out / name).write_bytes(data)
    return out


def test_report_of_a_run_dir_shows_a_grid_of_images_per_class_in_chromium(digits_run, tmp_path):
    page_path = tmp_path / "report.html"
    assert main(["report", str(digits_run), "--out", str(page_path), "--per-class", "6"]) == 0
    page = page_path.read_text()

    parsed = _parse(page)
    assert len(parsed.grids) == 10, parsed.grids
    assert all(n == 6 for n in parsed.grids.values()), parsed.grids
    assert 'id="influence"' in page and 'figure class="example test"' in page
    assert "(flipped; was" in page  # label noise re-applied: flipped examples show their clean label
    assert "Examples are listed, not drawn" not in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained

    # Chromium: every image decodes (checked by a load handler added to a copy of the page) ...
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.replace(
            "</body>",
            "<script>addEventListener('load', () => { const bad = "
            "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length; "
            "document.body.dataset.images = document.images.length; "
            "document.body.dataset.broken = bad; });</script></body>",
        )
    )
    dom = _chromium(["--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    seen = _parse(dom.stdout)
    assert len(seen.grids) == 10 and sum(seen.grids.values()) >= 10, seen.grids
    assert seen.body_attrs.get("data-broken") == "0", seen.body_attrs
    assert int(seen.body_attrs["data-images"]) == parsed.data_images >= 60 + 1

    # ... and the page draws as more than a blank sheet.
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", page_path.as_uri()], tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        grey = np.asarray(im.convert("L"), np.float64)
    assert grey.std() > 10 and len(np.unique(grey)) > 64, (grey.std(), len(np.unique(grey)))
    if os.environ.get("MEMSCORE_KEEP_REPORT"):  # for looking at it: MEMSCORE_KEEP_REPORT=DIR
        keep = Path(os.environ["MEMSCORE_KEEP_REPORT"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "report.html").write_text(page)
        (keep / "report.png").write_bytes(shot.read_bytes())


def test_sequence_examples_are_drawn_as_line_plots():
    ds = load_mnist1d(num_samples=300)
    spec = ScoringSpec(dataset="mnist1d", model="mlp", models=4, epochs=2, influence_top_k=3)
    res = run_scoring(ds, spec, device="cpu")
    scores, influence, summary = read_result_files(res.to_files())
    page = render_report(scores, influence, summary, ds, per_class=3, influence_examples=2, influence_k=3)
    parsed = _parse(page)
    assert len(parsed.grids) == 10 and all(n == 3 for n in parsed.grids.values())
    import base64

    from PIL import Image

    first = page.split('class="class-grid"', 1)[1].split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(first))) as im:
        assert im.width == 2 * im.height  # a line plot's frame, not a 1-pixel-high "image"


def test_without_the_dataset_the_report_lists_examples_and_says_why(digits_run):
    files = {name: (digits_run / name).read_bytes() for name in ("scores.parquet", "influence.parquet", "summary.json")}
    scores, influence, summary = read_result_files(files)
    summary = json.loads(json.dumps(summary))
    summary["spec"]["dataset"] = "datasets/" + "0" * 64 + ".npz"
    ds, why = load_dataset_for_report(summary)
    assert ds is None and "object store" in why
    page = render_report(scores, influence, summary, None, notes=[f"Examples are listed, not drawn: {why}."])
    parsed = _parse(page)
    assert len(parsed.grids) == 10 and sum(parsed.grids.values()) == 0
    assert parsed.data_images == 3  # the histogram, the ROC curve and the correlation matrix
    assert "Examples are listed, not drawn" in page and "<table" in page


def test_a_dataset_that_is_not_the_runs_is_refused(digits_run):
    files = {name: (digits_run / name).read_bytes() for name in ("scores.parquet", "influence.parquet", "summary.json")}
    _, _, summary = read_result_files(files)
    summary["spec"]["label_noise"] = 0.0  # reloading without the flips gives other labels
    ds, why = load_dataset_for_report(summary)
    assert ds is None and "not the data" in why


def test_the_report_shows_each_scores_split_half_reliability(digits_run):
    files = {name: (digits_run / name).read_bytes() for name in ("scores.parquet", "influence.parquet", "summary.json")}
    scores, influence, summary = read_result_files(files)
    page = render_report(scores, influence, summary, None)
    section = page.split('<section id="reliability">', 1)[1].split("</section>", 1)[0]
    for metric, r in summary["reliability"].items():
        row = section.split(f"<td>{metric}</td>", 1)[1].split("</tr>", 1)[0]
        assert f"{r['spearman_brown']:.3f}" in row and str(r["models_for_0_95"]) in row
    assert "The 8 models split by the parity of their id" in section and "Self-stopping" not in section
    del summary["reliability"]  # results written before every job reported it
    assert 'id="reliability"' not in render_report(scores, influence, summary, None)


def test_the_report_shows_raw_and_noise_corrected_memorized_fractions_side_by_side(digits_run):
    files = {name: (digits_run / name).read_bytes() for name in ("scores.parquet", "influence.parquet", "summary.json")}
    scores, influence, summary = read_result_files(files)
    page = render_report(scores, influence, summary, None)
    c = summary["fraction_memorization_ge_corrected"]["0.25"]
    row = page.split("noise-corrected ≥ 0.25 / ≥ 0.5", 1)[1].split("</tr>", 1)[0]
    assert f"{c['estimate']:.3f}" in row and f"{c['lower']:.3f}" in row and "95% interval" in row
    beyond = page.split("memorized beyond doubt", 1)[1].split("</tr>", 1)[0]
    assert f"{summary['count_memorization_lower_ge_0_25']} examples" in beyond
    del summary["fraction_memorization_ge_corrected"]  # a job reduced before this figure existed
    old = render_report(scores, influence, summary, None).split("noise-corrected ≥ 0.25 / ≥ 0.5", 1)[1]
    row = old.split("</tr>", 1)[0]
    assert "–" in row and "interval" not in row


def _files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("scores.parquet", "influence.parquet", "summary.json")}


def test_the_report_shows_the_membership_audit_with_its_roc_and_the_most_exposed_examples(digits_run):
    scores, influence, summary = read_result_files(_files(digits_run))
    mi = summary["membership_inference"]
    ds, _ = load_dataset_for_report(summary)
    page = render_report(scores, influence, summary, ds)
    section = page.split('<section id="privacy">', 1)[1].split("</section>", 1)[0]
    assert f"{mi['auc']:.3f} [{mi['auc_interval'][0]:.3f}, {mi['auc_interval'][1]:.3f}]" in section
    assert f"{mi['chance_auc']:.3f}" in section and 'alt="ROC curve, log-log"' in section
    # the 12 most exposed examples, highest privacy_risk first
    exposed = section.split('id="exposed"', 1)[1]
    shown = [int(c.split("#", 1)[1].split(" ", 1)[0]) for c in exposed.split("<figcaption>")[1:]]
    risk, se = np.nan_to_num(scores["privacy_risk"], nan=-1), scores["privacy_risk_stderr"]
    assert len(shown) == 12 and list(risk[shown]) == sorted(risk[shown], reverse=True)
    assert risk[shown[-1]] >= np.sort(risk)[-12]
    for a, b in zip(shown, shown[1:]):  # equal risks (often at the ceiling, 1): the surer first
        assert risk[a] > risk[b] or se[a] <= se[b]
    few = json.loads(json.dumps(summary))
    few["membership_inference"] = {"models": 4, "skipped": "needs at least 8 models"}
    assert "Not measured: needs at least 8 models" in render_report(scores, influence, few, None)


def test_the_report_shows_the_spearman_matrix_of_the_per_example_metrics(digits_run):
    from scipy.stats import spearmanr

    from memscore.report.metrics import spearman_matrix

    scores, influence, summary = read_result_files(_files(digits_run))
    names, r = spearman_matrix(scores)
    assert {"memorization", "privacy_risk", "model_confidence", "holdout_retraining"} <= set(names)
    a, b = names.index("memorization"), names.index("heldout_accuracy")
    ok = np.isfinite(scores["memorization"]) & np.isfinite(scores["heldout_accuracy"])
    expected = spearmanr(scores["memorization"][ok], scores["heldout_accuracy"][ok]).statistic
    assert r[a, b] == pytest.approx(expected) and r[a, a] == pytest.approx(1.0)
    section = render_report(scores, influence, summary, None).split('<section id="correlations">', 1)[1]
    assert 'alt="Spearman correlation matrix"' in section and f"{r[a, b]:.2f}" in section


def test_audit_prints_the_roc_summary_and_the_most_exposed_examples(digits_run, capsys):
    _, _, summary = read_result_files(_files(digits_run))
    mi = summary["membership_inference"]
    assert main(["audit", str(digits_run), "--top", "5", "--roc"]) == 0
    out = capsys.readouterr().out
    assert f"LiRA (online) on the run's own {mi['models']} models" in out
    auc_line = next(line for line in out.splitlines() if line.startswith("AUC"))
    assert f"{mi['auc']:.4f}" in auc_line and f"{mi['chance_auc']:.4f}" in auc_line
    assert f"examples leaking at FDR 5%: {mi['privacy_risk_significant']}" in out
    roc = out.split("ROC", 1)[1].split("most exposed", 1)[0]
    assert len([line for line in roc.splitlines() if line.strip()[:1].isdigit()]) == len(mi["roc"]["fpr"])
    table = out.split("most exposed training examples", 1)[1].splitlines()[2:]
    risks = [float(line.split()[2]) for line in table if line.strip()]
    assert len(risks) == 5 and risks == sorted(risks, reverse=True)
    # neither a directory nor a job a Results service knows: exit 1, saying so
    assert main(["audit", str(digits_run.parent / "no-such-dir"), "--results", "127.0.0.1:1"]) == 1
    assert "is not a directory" in capsys.readouterr().err
