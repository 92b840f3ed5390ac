"""memscore.metrics: the text exposition format 0.0.4 as Prometheus parses it (HELP and TYPE
lines, escaped label values, cumulative histogram buckets), callback gauges that fail are
left out of a scrape that still answers 200, and the spool that carries observations from
child processes to the parent adds them up."""

from __future__ import annotations

import multiprocessing
import re
import threading
import urllib.error
import urllib.request

import pytest

from memscore.metrics import CONTENT_TYPE, Registry, Spool, start_http_server

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse(text: str) -> tuple[dict, dict, dict]:
    """(samples {(name, frozenset(labels)): value}, types {name: type}, helps {name: help}) of
    an exposition, failing on any line that is not a valid sample or comment."""
    samples, types, helps = {}, {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = _unescape(doc)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name not in types, f"two TYPE lines for {name}"
            types[name] = kind
        else:
            m = _SAMPLE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            body = m.group(2) or ""
            pairs = _PAIR.findall(body)
            assert ",".join(f'{k}="{v}"' for k, v in pairs) == body, f"bad labels: {body!r}"
            key = (m.group(1), frozenset((k, _unescape(v)) for k, v in pairs))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = float(m.group(3))
    return samples, types, helps


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_counters_and_gauges_render_with_help_type_and_escaped_label_values():
    reg = Registry()
    c = reg.counter("memscore_things_total", "Things.\nTwo lines, a back\\slash.", ("kind",))
    g = reg.gauge("memscore_level", "A level.")
    awkward = 'a "quoted" back\\slash and a\nnewline'
    c.inc(kind=awkward)
    c.inc(2.5, kind=awkward)
    c.inc(kind="plain")
    g.set(-3)
    text = reg.render()
    assert '\\"quoted\\" back\\\\slash and a\\nnewline' in text  # the escaped form on the wire
    samples, types, helps = parse(text)
    assert value(samples, "memscore_things_total", kind=awkward) == 3.5
    assert value(samples, "memscore_things_total", kind="plain") == 1
    assert value(samples, "memscore_level") == -3
    assert types == {"memscore_things_total": "counter", "memscore_level": "gauge"}
    assert helps["memscore_things_total"] == "Things.\nTwo lines, a back\\slash."
    # every sample follows its family's TYPE line
    lines = text.splitlines()
    assert lines.index("# TYPE memscore_level gauge") < lines.index("memscore_level -3.0")


def test_histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count():
    reg = Registry()
    h = reg.histogram("memscore_wait_seconds", "Waits.", ("op",), buckets=(0.1, 1, 10))
    for v in (0.05, 0.1, 0.5, 3, 50, 70):
        h.observe(v, op="a")
    h.observe(2, op="b")
    samples, types, _ = parse(reg.render())
    assert types == {"memscore_wait_seconds": "histogram"}
    buckets = {
        le: value(samples, "memscore_wait_seconds_bucket", op="a", le=le) for le in ("0.1", "1.0", "10.0", "+Inf")
    }
    assert buckets == {"0.1": 2, "1.0": 3, "10.0": 4, "+Inf": 6}  # a value on a bound counts in it
    assert value(samples, "memscore_wait_seconds_count", op="a") == 6
    assert value(samples, "memscore_wait_seconds_sum", op="a") == pytest.approx(123.65)
    assert value(samples, "memscore_wait_seconds_bucket", op="b", le="1.0") == 0
    assert value(samples, "memscore_wait_seconds_bucket", op="b", le="10.0") == 1


def test_labels_and_names_are_checked():
    reg = Registry()
    c = reg.counter("memscore_x_total", "X.", ("a",))
    with pytest.raises(ValueError):
        c.inc(b="1")
    with pytest.raises(ValueError):
        c.inc(-1, a="1")
    with pytest.raises(ValueError):
        reg.counter("other_total", "No prefix.")
    with pytest.raises(ValueError):
        reg.gauge("memscore_x_total", "Same name, other kind.")
    assert reg.counter("memscore_x_total", "X.", ("a",)) is c


def test_counts_from_many_threads_are_all_kept():
    reg = Registry()
    c = reg.counter("memscore_hits_total", "Hits.", ("t",))
    h = reg.histogram("memscore_lat_seconds", "Latency.")

    def work():
        for _ in range(2000):
            c.inc(t="x")
            h.observe(0.01)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples, _, _ = parse(reg.render())
    assert value(samples, "memscore_hits_total", t="x") == 16000
    assert value(samples, "memscore_lat_seconds_count") == 16000


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], ""


def test_a_failing_callback_gauge_is_left_out_and_the_scrape_still_answers():
    reg = Registry()
    state = {"down": True}

    def depth():
        if state["down"]:
            raise ConnectionError("broker unreachable")
        return {"gpu": 4, "gpu-reduce": 0}

    reg.gauge_callback("memscore_queue_depth", "Waiting tasks.", ("queue",), depth)
    reg.gauge_callback("memscore_answer", "Always there.", (), lambda: 42)
    server = start_http_server(0, "127.0.0.1", reg)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        status, ctype, body = _get(f"{url}/metrics")
        assert status == 200 and ctype == CONTENT_TYPE
        samples, types, _ = parse(body)
        assert "memscore_queue_depth" not in types and value(samples, "memscore_answer") == 42
        state["down"] = False  # computed again at the next scrape
        samples, _, _ = parse(_get(f"{url}/metrics")[2])
        assert value(samples, "memscore_queue_depth", queue="gpu") == 4
        assert value(samples, "memscore_queue_depth", queue="gpu-reduce") == 0
        assert _get(f"{url}/")[0] == 404 and _get(f"{url}/metricsx")[0] == 404
    finally:
        server.shutdown()


def _child(directory: str, n: int) -> None:
    spool = Spool(directory)
    for i in range(n):
        spool.write(
            [
                {"op": "observe", "name": "memscore_job_seconds", "labels": {"task": "t"}, "value": 2.0},
                {"op": "inc", "name": "memscore_jobs_done_total", "labels": {}, "value": 1},
                {"op": "set", "name": "memscore_last", "labels": {}, "value": i},
            ]
        )


def test_the_parent_adds_up_what_child_processes_spool(tmp_path):
    reg = Registry()
    h = reg.histogram("memscore_job_seconds", "Job time.", ("task",), buckets=(1, 5))
    reg.counter("memscore_jobs_done_total", "Jobs done.")
    reg.gauge("memscore_last", "Last job's index.")
    h.observe(0.5, task="t")  # the parent's own observations stay
    spool = Spool(tmp_path / "spool")
    reg.on_scrape(lambda: spool.fold(reg))
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_child, args=(str(spool.directory), 5)) for _ in range(4)]
    for p in children:
        p.start()
    for p in children:
        p.join(30)
        assert p.exitcode == 0
    (spool.directory / "junk.json").write_text("{not json")  # skipped, not fatal
    samples, _, _ = parse(reg.render())
    assert value(samples, "memscore_jobs_done_total") == 20
    assert value(samples, "memscore_job_seconds_count", task="t") == 21
    assert value(samples, "memscore_job_seconds_bucket", task="t", le="1.0") == 1
    assert value(samples, "memscore_job_seconds_sum", task="t") == pytest.approx(40.5)
    assert value(samples, "memscore_last") == 4  # files are applied oldest first
    assert not list(spool.directory.iterdir()), "folded files are deleted"
    samples, _, _ = parse(reg.render())  # a second scrape counts nothing twice
    assert value(samples, "memscore_jobs_done_total") == 20
