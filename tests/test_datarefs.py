"""Which names a job may give as its dataset or corpus: built-ins, uploads, and server paths
only under MEMSCORE_DATA_ROOTS, with links resolved; the same answer for "absent" and "not
allowed", so a client learns nothing about the server's files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from memscore.datarefs import (
    allowed_path,
    check_corpus_ref,
    check_dataset_ref,
    load_job_corpus,
    load_job_dataset,
)
from memscore.engine.corpus import CorpusError
from memscore.engine.datasets import DatasetError
from memscore.store import layout
from memscore.store.objects import LocalObjectStore

from .services.conftest import write_blobs_npz


@pytest.fixture
def roots(tmp_path):
    """(data root, a directory outside it, the object store)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside, LocalObjectStore(tmp_path / "store")


def _message_without_ref(why: str, ref: str) -> str:
    return why.replace(repr(ref), "REF")


def test_a_server_path_is_refused_without_data_roots_and_absent_or_forbidden_read_the_same(roots):
    root, outside, objects = roots
    secret = write_blobs_npz(outside / "other_tenant.npz")
    absent = str(outside / "no_such.npz")
    why_secret = check_dataset_ref(str(secret), objects, [str(root)])
    why_absent = check_dataset_ref(absent, objects, [str(root)])
    assert why_secret and why_absent
    assert _message_without_ref(why_secret, str(secret)) == _message_without_ref(why_absent, absent)
    assert check_dataset_ref(str(secret), objects) is not None  # no roots: no server paths at all
    with pytest.raises(DatasetError) as e:
        load_job_dataset(str(secret), objects, [str(root)])
    assert "MEMSCORE_DATA_ROOTS" in str(e.value)


def test_a_file_under_a_data_root_loads(roots):
    root, _, objects = roots
    data = write_blobs_npz(root / "mine.npz")
    assert check_dataset_ref(str(data), objects, [str(root)]) is None
    ds = load_job_dataset(str(data), objects, [str(root)])
    assert ds.n_train > 0


def test_links_and_dot_dots_cannot_lead_out_of_a_root(roots):
    root, outside, objects = roots
    secret = write_blobs_npz(outside / "secret.npz")
    (root / "link.npz").symlink_to(secret)
    for ref in (root / "link.npz", root / ".." / "outside" / "secret.npz"):
        assert check_dataset_ref(str(ref), objects, [str(root)]) is not None, ref
        assert allowed_path(str(ref), [str(root)]) is None
    # an ImageFolder inside the root with one image linked from outside
    folder = root / "images" / "cat"
    folder.mkdir(parents=True)
    (outside / "x.png").write_bytes(b"not really a png")
    (folder / "x.png").symlink_to(outside / "x.png")
    assert allowed_path(str(root / "images"), [str(root)]) is None
    os.remove(folder / "x.png")
    (folder / "y.png").write_bytes(b"inside")
    assert allowed_path(str(root / "images"), [str(root)]) == os.path.realpath(root / "images")


def test_only_exact_upload_keys_count_as_uploads(roots):
    root, _, objects = roots
    assert layout.is_dataset_key(layout.dataset_key("a" * 64))
    for ref in ("datasets/../x", "datasets/" + "a" * 64 + ".npz/../../etc", "datasets/x.npz", "datasets/"):
        assert not layout.is_dataset_key(ref), ref
        assert check_dataset_ref(ref, objects, [str(root)]) is not None
    assert check_dataset_ref("bad\0name", objects, [str(root)]) is not None


def test_corpora_follow_the_same_rules_and_directories_are_not_corpora(roots):
    root, outside, objects = roots
    (outside / "secret.txt").write_text("the pin is 1234\n" * 50)
    (root / "ok.txt").write_text("an allowed corpus of plain text.\n" * 50)
    why = check_corpus_ref(str(outside / "secret.txt"), objects, [str(root)])
    assert why and _message_without_ref(why, str(outside / "secret.txt")) == _message_without_ref(
        check_corpus_ref(str(outside / "nope.txt"), objects, [str(root)]), str(outside / "nope.txt")
    )
    assert check_corpus_ref(str(root), objects, [str(root)]) is not None
    assert check_corpus_ref(str(root / "ok.txt"), objects, [str(root)]) is None
    assert "allowed corpus" in load_job_corpus(str(root / "ok.txt"), objects, [str(root)])
    with pytest.raises(CorpusError):
        load_job_corpus(str(outside / "secret.txt"), objects, [str(root)])


def test_a_huge_reference_is_not_echoed_whole(roots):
    root, _, objects = roots
    why = check_dataset_ref("x" * 1_000_000, objects, [str(root)])
    assert len(why) < 1000


def test_builtins_need_no_root(roots):
    _, _, objects = roots
    assert check_dataset_ref("digits", objects) is None
    assert np.asarray(load_job_dataset("digits", objects).y_train).size > 0


def test_a_tenants_own_data_root_is_invisible_to_every_other_tenant(roots, tmp_path):
    from memscore.datarefs import roots_for

    root, outside, objects = roots
    shared = tmp_path / "shared"
    shared.mkdir()
    mine, public = write_blobs_npz(root / "a.npz"), write_blobs_npz(shared / "s.npz")
    setting = (f"team-a={root}", str(shared))
    assert roots_for(setting, "team-a") == [str(root), str(shared)]
    assert roots_for(setting, "team-b") == roots_for(setting, None) == [str(shared)]
    assert check_dataset_ref(str(mine), objects, setting, "team-a") is None
    assert load_job_dataset(str(mine), objects, setting, "team-a").n_train > 0
    for tenant in ("team-b", None):  # another tenant, and a caller with no tenant
        why = check_dataset_ref(str(mine), objects, setting, tenant)
        absent = check_dataset_ref(str(root / "no-such.npz"), objects, setting, tenant)
        assert why and _message_without_ref(why, str(mine)) == _message_without_ref(absent, str(root / "no-such.npz"))
        with pytest.raises(DatasetError):
            load_job_dataset(str(mine), objects, setting, tenant)
        assert check_dataset_ref(str(public), objects, setting, tenant) is None  # a plain entry is everyone's
    corpus = root / "c.txt"
    corpus.write_text("some text to learn\n" * 20)
    assert check_corpus_ref(str(corpus), objects, setting, "team-a") is None
    assert check_corpus_ref(str(corpus), objects, setting, "team-b")
    with pytest.raises(CorpusError):
        load_job_corpus(str(corpus), objects, setting, "team-b")


def test_an_entry_that_only_looks_like_a_tenants_is_a_plain_directory(tmp_path):
    from memscore.datarefs import roots_for

    odd = tmp_path / "x=y"  # '=' in a directory name, not TENANT=/absolute/dir
    assert roots_for([str(odd), "bad name=/srv", "team-a=relative"], "team-a") == [
        str(odd), "bad name=/srv", "team-a=relative"
    ]  # fmt: skip


def test_a_datasets_identity_is_its_content_address_or_its_files_state(roots):
    import os

    from memscore.datarefs import dataset_identity

    root, outside, objects = roots
    assert dataset_identity("mnist1d", objects) == "mnist1d"
    assert dataset_identity("datasets/" + "ab" * 32 + ".npz", objects) == "datasets/" + "ab" * 32 + ".npz"
    path = write_blobs_npz(root / "b.npz")
    first = dataset_identity(str(path), objects, (str(root),))
    assert first is not None and str(path.resolve()) in first
    os.utime(path, ns=(1, 1))  # rewritten: another modification time
    assert dataset_identity(str(path), objects, (str(root),)) not in (None, first)
    assert dataset_identity(str(path), objects) is None  # no data roots: not readable, no identity
    assert dataset_identity(str(root), objects, (str(root),)) is None  # a directory: read afresh
