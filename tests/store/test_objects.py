"""The object-store contract, checked on the local store and on a real S3 server (moto)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import urllib.request

import pytest

from memscore.store.objects import (
    LocalObjectStore,
    ObjectNotFound,
    S3ObjectStore,
    StoreUnavailable,
    open_object_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, make_settings, tmp_path):
    if request.param == "local":
        return open_object_store(make_settings(store=str(tmp_path / "objects")))
    return open_object_store(request.getfixturevalue("s3_settings"))


def test_settings_select_the_backend(make_settings, s3_settings, tmp_path):
    assert isinstance(open_object_store(s3_settings), S3ObjectStore)
    assert open_object_store(s3_settings).describe().startswith(f"s3://{s3_settings.store[5:]}@http://")
    local = open_object_store(make_settings(store=str(tmp_path / "d")))
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "d").resolve()
    default = open_object_store(make_settings())
    assert default.root == (tmp_path / "home" / "store").resolve()
    assert open_object_store(make_settings(store=(tmp_path / "u").as_uri())).root == (tmp_path / "u").resolve()
    for bad in ("gs://bucket", "s3://", "s3://bucket/prefix"):
        with pytest.raises(ValueError):
            open_object_store(make_settings(store=bad))
    with pytest.raises(ValueError, match="endpoint"):
        open_object_store(make_settings(store="s3://b"))


def test_round_trip_and_metadata(store):
    data = os.urandom(3000)
    store.put_bytes("jobs/j1/spec.json", data)
    assert store.get_bytes("jobs/j1/spec.json") == data
    assert store.exists("jobs/j1/spec.json") and not store.exists("jobs/j1/other")
    assert store.size("jobs/j1/spec.json") == 3000
    chunks = list(store.iter_chunks("jobs/j1/spec.json", chunk_size=1024))
    assert b"".join(chunks) == data and [len(c) for c in chunks] == [1024, 1024, 952]
    store.put_bytes("jobs/j1/empty", b"")
    assert store.get_bytes("jobs/j1/empty") == b"" and store.size("jobs/j1/empty") == 0


def test_missing_key_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/x")
    with pytest.raises(ObjectNotFound):
        store.size("nope/x")
    with pytest.raises(ObjectNotFound):
        next(store.iter_chunks("nope/x"))
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError
        store.get_bytes("nope/y")
    store.delete("nope/x")  # deleting a missing key is not an error


def test_bad_keys_are_refused(store):
    for key in ("", "/abs/key", "a/../b", "../x", "a//b", "a/./b", "a\\b", "a/.tmp-x"):
        with pytest.raises(ValueError):
            store.put_bytes(key, b"x")
        with pytest.raises(ValueError):
            store.exists(key)


def test_overwrite_is_atomic_for_concurrent_readers(store):
    size = 256 * 1024
    blobs = [bytes([b]) * size for b in (1, 2)]
    store.put_bytes("k", blobs[0])
    stop = threading.Event()
    seen, errors = [], []

    def reader():
        while not stop.is_set():
            got = store.get_bytes("k")
            seen.append(got[0])
            if got not in blobs:
                errors.append(len(got))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(12):
        store.put_bytes("k", blobs[i % 2])
    stop.set()
    t.join()
    assert not errors, f"a reader saw a partial or mixed object (lengths {errors[:5]})"
    assert store.get_bytes("k") == blobs[1] and seen


def test_list_and_delete_prefix(store):
    keys = [
        "jobs/a/shards/0/trace.npz",
        "jobs/a/shards/1/trace.npz",
        "jobs/a/spec.json",
        "jobs/ab/spec.json",
        "datasets/x.npz",
    ]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert store.list() == sorted(keys)
    assert store.list("jobs/a/") == sorted(keys[:3])
    assert store.list("jobs/a") == sorted(keys[:4])  # a plain string prefix
    assert store.list("jobs/a/shards/1/") == ["jobs/a/shards/1/trace.npz"]
    assert store.list("nothing/") == []
    with pytest.raises(ValueError):
        store.delete_prefix("")
    assert store.delete_prefix("jobs/a/") == 3
    assert store.list() == ["datasets/x.npz", "jobs/ab/spec.json"]
    store.delete("datasets/x.npz")
    assert store.list() == ["jobs/ab/spec.json"]
    # a key can be written again where its directory was pruned
    store.put_bytes("jobs/a/shards/0/trace.npz", b"again")
    assert store.get_bytes("jobs/a/shards/0/trace.npz") == b"again"


def test_put_file_multipart_sized(store, tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(5 * 1024 * 1024 + 4097)  # above S3's 5 MiB part size: two parts
    path.write_bytes(data)
    store.put_file("datasets/big.bin", path)
    assert store.size("datasets/big.bin") == len(data)
    if isinstance(store, S3ObjectStore):  # the ETag of a multipart upload ends in -<parts>
        assert store._client.stat_object(store.bucket, "datasets/big.bin").etag.endswith("-2")
    h = hashlib.sha256()
    for chunk in store.iter_chunks("datasets/big.bin"):
        assert len(chunk) <= 1 << 20
        h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        store.put_file("datasets/none.bin", tmp_path / "missing.bin")


def test_presigned_url_serves_the_object(store):
    store.put_bytes("jobs/j/results/summary.json", b'{"ok": true}')
    url = store.presigned_get_url("jobs/j/results/summary.json", expires_s=60)
    assert url.startswith("file://" if isinstance(store, LocalObjectStore) else "http://")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b'{"ok": true}'


def test_presigned_urls_name_the_public_endpoint(s3_settings):
    """Behind a proxy or in a cluster, clients reach S3 by another name than the services do."""
    import dataclasses

    host, port = s3_settings.s3_endpoint.split(":")
    public = dataclasses.replace(s3_settings, s3_public_endpoint=f"http://localhost:{port}")
    store = open_object_store(public)
    store.put_bytes("jobs/j/results/scores.parquet", b"PAR1")
    url = store.presigned_get_url("jobs/j/results/scores.parquet", expires_s=60)
    assert url.startswith(f"http://localhost:{port}/")
    with urllib.request.urlopen(url, timeout=10) as resp:  # the signature holds for that host
        assert resp.read() == b"PAR1"
    with pytest.raises(ValueError, match="public S3 endpoint"):
        open_object_store(dataclasses.replace(s3_settings, s3_public_endpoint="ftp://x"))


def test_local_store_hides_temp_files_and_stays_under_root(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    store.put_bytes("a/b", b"1")
    (tmp_path / "root" / "a" / ".tmp-partial").write_bytes(b"half")
    assert store.list() == ["a/b"]
    assert store.describe() == (tmp_path / "root").resolve().as_uri()


def test_unreachable_endpoint_raises_store_unavailable(closed_port, s3_credentials):
    store = S3ObjectStore(f"127.0.0.1:{closed_port}", *s3_credentials, "bucket", connect_timeout_s=1, retries=0)
    for call in (lambda: store.get_bytes("k"), lambda: store.put_bytes("k", b"x"), lambda: store.list("")):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert "127.0.0.1" in str(info.value)


class _Always503(http.server.BaseHTTPRequestHandler):
    def _reply(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _reply

    def log_message(self, *args):
        pass


def test_server_errors_raise_store_unavailable(s3_credentials):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        store = S3ObjectStore(
            f"127.0.0.1:{server.server_address[1]}", *s3_credentials, "bucket", region="us-east-1", retries=1
        )
        with pytest.raises(StoreUnavailable):
            store.get_bytes("k")
    finally:
        server.shutdown()
        server.server_close()


def test_temp_files_left_by_a_crash_are_swept_and_live_ones_kept(tmp_path):
    import os
    import time

    (tmp_path / "root" / "jobs" / "j").mkdir(parents=True)
    stale, live = tmp_path / "root" / "jobs" / "j" / ".tmp-dead", tmp_path / "root" / "jobs" / "j" / ".tmp-live"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    LocalObjectStore(tmp_path / "root")
    assert not stale.exists() and live.exists()
