import numpy as np
import pytest

from memscore.engine.canaries import CanaryFormat, insert_canaries


def test_parse_ssn_format():
    fmt = CanaryFormat.parse("my social security number is {ddd-dd-dddd}")
    assert fmt.prefix == "my social security number is "
    assert fmt.space_size == 10**9
    assert fmt.secret_length == len("ddd-dd-dddd")
    assert fmt.render(0) == "my social security number is 000-00-0000"
    assert fmt.render(10**9 - 1) == "my social security number is 999-99-9999"
    assert fmt.render(123456789) == "my social security number is 123-45-6789"


def test_parse_letters_and_several_slots():
    fmt = CanaryFormat.parse("code {aa} then {d}.")
    assert fmt.space_size == 26 * 26 * 10
    assert fmt.prefix == "code "
    assert fmt.render(0) == "code aa then 0."
    assert fmt.render(fmt.space_size - 1) == "code zz then 9."
    assert fmt.allowed_chars()[:3] == ["abcdefghijklmnopqrstuvwxyz"] * 2 + [" "]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("the pin is 1234", "no slot"),
        ("the pin is {dddd", "never closed"),
        ("the pin is dddd}", "unbalanced"),
        ("the pin is }dddd{", "unbalanced"),
        ("the pin is {d{d}}", "nested"),
        ("the pin is {dd}}", "stray"),
        ("the pin is {dxd}", "unknown placeholder 'x'"),
        ("the pin is {dDd}", "unknown placeholder 'D'"),
        ("the pin is {}", "empty slot"),
        ("the pin is {--}", "no placeholder"),
        ("the pin\nis {dd}", "one line"),
        ("key {" + "a" * 14 + "}", "more than 2^62"),
    ],
)
def test_bad_formats_give_clear_errors(bad, words):
    with pytest.raises(ValueError, match=words.replace("^", r"\^")):
        CanaryFormat.parse(bad)


def test_largest_indexable_space_is_accepted():
    fmt = CanaryFormat.parse("key {" + "d" * 18 + "}")  # 10^18 < 2^62
    assert fmt.space_size == 10**18
    assert fmt.index_of(fmt.render(10**18 - 1)) == 10**18 - 1


def test_render_and_index_of_are_inverse_bijections():
    fmt = CanaryFormat.parse("id {ad-d}")
    rendered = fmt.render_secrets(np.arange(fmt.space_size))
    assert len(set(rendered)) == fmt.space_size == 2600
    assert rendered == sorted(rendered)  # index order is lexicographic order
    assert [fmt.index_of(s) for s in rendered] == list(range(fmt.space_size))
    assert all(fmt.index_of(fmt.render(i)) == i for i in range(0, 2600, 7))  # whole canary too
    assert fmt.render_secret(2599) == "z9-9"


@pytest.mark.parametrize("not_a_secret", ["id a1_1", "id A1-1", "id a1-", "nope", "id ab-1"])
def test_index_of_rejects_strings_outside_the_format(not_a_secret):
    with pytest.raises(ValueError, match="does not match"):
        CanaryFormat.parse("id {ad-d}").index_of(not_a_secret)


def test_render_rejects_out_of_range_indices():
    fmt = CanaryFormat.parse("the pin is {dddd}")
    with pytest.raises(ValueError, match="out of range"):
        fmt.render(10_000)
    with pytest.raises(ValueError, match="out of range"):
        fmt.render(-1)


def test_sample_is_seeded_distinct_and_in_the_format():
    fmt = CanaryFormat.parse("the pin is {dddd}")
    a = fmt.sample(np.random.default_rng(7), 50)
    b = fmt.sample(np.random.default_rng(7), 50)
    assert a == b and len(set(a)) == 50
    assert all(s.startswith("the pin is ") and s[-4:].isdigit() for s in a)
    assert fmt.sample(np.random.default_rng(8), 50) != a
    small = CanaryFormat.parse("{d}")
    assert sorted(small.sample(np.random.default_rng(0), 10)) == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match="distinct"):
        small.sample(np.random.default_rng(0), 11)


def test_enumerate_yields_every_candidate_in_batches():
    fmt = CanaryFormat.parse("the pin is {ddd}")
    batches = list(fmt.enumerate(batch_size=300))
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    assert sum(batches, []) == [f"{i:03d}" for i in range(1000)]
    assert sum(fmt.enumerate(start=990, stop=2000, batch_size=4), []) == [f"{i}" for i in range(990, 1000)]


CORPUS = "".join(f"line {i} of the corpus\n" for i in range(40))


@pytest.mark.parametrize("corpus", [CORPUS, CORPUS.rstrip("\n")])
def test_insert_canaries_adds_each_canary_t_times_as_whole_lines(corpus):
    canaries = [("the pin is 1234", 5), ("the pin is 9876", 1), ("the pin is 5555", 0)]
    out = insert_canaries(corpus, canaries, seed=3)
    lines = out.split("\n")
    assert lines.count("the pin is 1234") == 5
    assert lines.count("the pin is 9876") == 1
    assert "5555" not in out
    assert out.count("the pin is") == 6  # never glued to a neighbouring line
    kept = [line for line in lines if not line.startswith("the pin is")]
    assert "\n".join(kept) == corpus  # original lines intact and in order
    assert out.endswith("\n") == corpus.endswith("\n")


def test_insert_canaries_is_seeded():
    canaries = [("the pin is 1234", 8)]
    assert insert_canaries(CORPUS, canaries, seed=1) == insert_canaries(CORPUS, canaries, seed=1)
    assert insert_canaries(CORPUS, canaries, seed=1) != insert_canaries(CORPUS, canaries, seed=2)


def test_insert_canaries_spreads_copies_over_the_corpus():
    out = insert_canaries(CORPUS * 10, [("CANARY", 200)], seed=0).split("\n")
    where = np.array([i for i, line in enumerate(out) if line == "CANARY"]) / len(out)
    assert where.min() < 0.1 and where.max() > 0.9 and 0.4 < np.median(where) < 0.6


def test_insert_canaries_rejects_bad_requests():
    with pytest.raises(ValueError, match=">= 0"):
        insert_canaries(CORPUS, [("x", -1)], seed=0)
    with pytest.raises(ValueError, match="one line"):
        insert_canaries(CORPUS, [("x\ny", 1)], seed=0)
    assert insert_canaries("", [("only", 2)], seed=0) == "only\nonly"
