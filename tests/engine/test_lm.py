"""Language models (engine/lm.py) and the corpora and tokenizer they train on (engine/corpus.py)."""

import math

import numpy as np
import pytest
import torch

from memscore.engine.canaries import CanaryFormat
from memscore.engine.corpus import (
    CharTokenizer,
    CorpusError,
    builtin_corpus,
    corpus_from_bytes,
    load_corpus,
)
from memscore.engine.lm import (
    beam_complete,
    greedy_complete,
    lm_checkpoint,
    load_lm,
    log_perplexity,
    train_lm,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


TEXT = load_corpus("builtin")[:6000]


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def tiny_lm(request):
    tok = CharTokenizer.build(TEXT, ["the pin is {dddd}"])
    return train_lm(
        TEXT,
        arch=request.param,
        steps=40,
        seq_len=32,
        batch_size=16,
        hidden=48,
        embed_dim=16,
        heads=2,
        seed=0,
        device="cpu",
        tokenizer=tok,
    )


# --- corpus -----------------------------------------------------------------------------


def test_builtin_corpus_is_english_text_shipped_with_scikit_learn():
    text = load_corpus("builtin")
    assert text == builtin_corpus() and len(text) > 40_000
    assert "Iris" in text and "the" in text.split()


def test_load_corpus_reads_a_local_utf8_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("héllo wörld\n" * 50, encoding="utf-8")
    assert load_corpus(str(path)) == "héllo wörld\n" * 50


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "is empty"),
        (b" \n\t\n", "is empty"),
        (b"short text", "too short"),
        (b"\xff\xfe" + b"a" * 300, "not UTF-8"),
    ],
)
def test_unusable_corpora_give_clear_errors(data, words):
    with pytest.raises(CorpusError, match=words):
        corpus_from_bytes(data)


def test_missing_corpus_file_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="neither 'builtin' nor an existing text file"):
        load_corpus(str(tmp_path / "absent.txt"))


def test_tokenizer_covers_every_candidate_of_the_formats():
    tok = CharTokenizer.build("no digits here\n", ["the pin is {dddd}", "id {aa}"])
    assert set("0123456789abcdefghijklmnopqrstuvwxyz\n") <= set(tok.chars)
    ids = tok.encode("the pin is 0042")
    assert ids.dtype == np.int64 and tok.decode(ids) == "the pin is 0042"
    batch = tok.encode_batch(["0042", "9999", "1234"])
    assert batch.shape == (3, 4) and tok.decode(batch[1]) == "9999"
    with pytest.raises(ValueError, match="outside the vocabulary: 'Q'"):
        tok.encode("Q")
    with pytest.raises(ValueError, match="equal length"):
        tok.encode_batch(["1", "22"])


# --- training -----------------------------------------------------------------------------


def test_training_is_deterministic_on_cpu_with_a_seed():
    kw = dict(arch="lstm", steps=5, seq_len=16, batch_size=4, hidden=16, embed_dim=8, device="cpu")
    a, b, c = train_lm(TEXT, seed=3, **kw), train_lm(TEXT, seed=3, **kw), train_lm(TEXT, seed=4, **kw)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_training_lowers_the_loss_and_reports_progress(tiny_lm):
    assert tiny_lm.train_summary["steps"] == 40
    # A uniform guess over the vocabulary costs log2(V) bits per character.
    assert tiny_lm.train_summary["final_loss_bits_per_char"] < math.log2(tiny_lm.tokenizer.vocab_size) - 1
    seen = []
    train_lm(
        TEXT,
        steps=7,
        seq_len=16,
        batch_size=4,
        hidden=8,
        embed_dim=4,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (7, 7) and all(t == 7 for _, t in seen)


def test_training_can_be_stopped():
    from memscore.engine.ensemble import Cancelled

    with pytest.raises(Cancelled):
        train_lm(TEXT, steps=50, seq_len=16, batch_size=4, hidden=8, device="cpu", should_stop=lambda: True)


def test_training_rejects_bad_requests():
    with pytest.raises(ValueError, match="too short for windows"):
        train_lm("abc" * 5, seq_len=64, device="cpu")
    with pytest.raises(ValueError, match="unknown language model 'gru'"):
        train_lm(TEXT, arch="gru", steps=1, device="cpu")


# --- scoring --------------------------------------------------------------------------------


def full_sequence_logppl(model, prefix: str, secret: str) -> float:
    """Px by the definition: one forward pass over prefix+secret, no state reuse, no batching."""
    ids = torch.as_tensor(model.tokenizer.encode(prefix + secret))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1])[0][0].double(), dim=-1)
    targets = ids[0, len(prefix) :]
    return float(-logp[torch.arange(len(prefix) - 1, ids.shape[1] - 1), targets].sum() / math.log(2))


def test_batched_log_perplexity_matches_the_definition(tiny_lm):
    secrets = CanaryFormat.parse("the pin is {dddd}").render_secrets(np.arange(0, 10_000, 97))
    batched = log_perplexity(tiny_lm, "\nthe pin is ", secrets, batch_size=16)
    one_by_one = [full_sequence_logppl(tiny_lm, "\nthe pin is ", s) for s in secrets[:12]]
    np.testing.assert_allclose(batched[:12], one_by_one, rtol=1e-4, atol=1e-4)
    as_tokens = log_perplexity(tiny_lm, "\nthe pin is ", tiny_lm.tokenizer.encode_batch(secrets), batch_size=1000)
    np.testing.assert_allclose(as_tokens, batched, rtol=1e-5, atol=1e-5)
    assert batched.dtype == np.float64 and np.all(batched > 0)


def test_log_perplexity_accepts_candidates_of_different_lengths(tiny_lm):
    cands = ["7", "12", "345", "9", "0000"]
    got = log_perplexity(tiny_lm, "\nthe pin is ", cands)
    want = [full_sequence_logppl(tiny_lm, "\nthe pin is ", s) for s in cands]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prefix must not be empty"):
        log_perplexity(tiny_lm, "", cands)


def test_checkpoint_round_trip_scores_identically(tiny_lm):
    again = load_lm(lm_checkpoint(tiny_lm))
    cands = ["0000", "1234", "9876"]
    np.testing.assert_array_equal(
        log_perplexity(again, "\nthe pin is ", cands), log_perplexity(tiny_lm, "\nthe pin is ", cands)
    )


# --- extraction -----------------------------------------------------------------------------


def test_wide_beam_finds_the_most_likely_secret(tiny_lm):
    # With two digits and beam 10, the search keeps every first digit: it is exhaustive.
    fmt = CanaryFormat.parse("the pin is {dd}")
    scores = log_perplexity(tiny_lm, "\nthe pin is ", fmt.render_secrets(np.arange(100)))
    best = fmt.render_secret(int(np.argmin(scores)))
    assert beam_complete(tiny_lm, "\nthe pin is ", 2, beam=10, allowed=fmt.allowed_chars()) == best


def test_greedy_takes_the_most_likely_character_each_step(tiny_lm):
    fmt = CanaryFormat.parse("the pin is {dddd}")
    got = greedy_complete(tiny_lm, "\nthe pin is ", 4, allowed=fmt.allowed_chars())
    assert len(got) == 4 and got.isdigit()
    text = "\nthe pin is "
    for _ in range(4):
        nxt = log_perplexity(tiny_lm, text, list("0123456789"))
        text += str(int(np.argmin(nxt)))
    assert got == text[-4:]
    free = greedy_complete(tiny_lm, "\nthe pin is ", 6)  # unconstrained: any character
    assert len(free) == 6


def test_models_are_causal(tiny_lm):
    ids = torch.as_tensor(tiny_lm.tokenizer.encode("the pin is 1234"))[None]
    changed = ids.clone()
    changed[0, 10] = (changed[0, 10] + 1) % tiny_lm.tokenizer.vocab_size
    with torch.no_grad():
        a, b = tiny_lm(ids)[0], tiny_lm(changed)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10])  # the future does not leak into the past
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_training_length_is_steps_else_epochs_else_a_clipped_default():
    from memscore.engine.lm import resolve_steps

    assert resolve_steps(43_000, steps=50, epochs=3, batch_size=32, seq_len=64) == 50
    assert resolve_steps(43_000, steps=0, epochs=3, batch_size=32, seq_len=64) == math.ceil(3 * 43_000 / 2048)
    assert resolve_steps(43_000, steps=0, epochs=0, batch_size=32, seq_len=64) == math.ceil(15 * 43_000 / 2048)
    assert resolve_steps(1_000, steps=0, epochs=0, batch_size=32, seq_len=64) == 200
    assert resolve_steps(10**9, steps=0, epochs=0, batch_size=32, seq_len=64) == 20_000
