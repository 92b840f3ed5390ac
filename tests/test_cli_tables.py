"""`memscore.cli.tables.print_table`: the one helper behind every table and CSV the CLI writes."""

import csv
import io
from contextlib import redirect_stdout
from types import SimpleNamespace

from memscore.cli.tables import print_table

ROWS = [
    {"index": 7, "name": "a", "score": 0.5, "rank": 12.0},
    {"index": 1234, "name": "longer", "score": 1 / 3, "rank": 3.5e6},
]


def lines(rows=ROWS, **kw) -> list[str]:
    out = io.StringIO()
    print_table(rows, ("index", "name", "score", "rank"), file=out, **kw)
    return out.getvalue().splitlines()


def test_columns_are_right_aligned_to_their_widest_cell_and_floats_get_three_decimals():
    assert lines(formats={"rank": ".3g"}) == [
        "index    name  score     rank",
        "    7       a  0.500       12",
        " 1234  longer  0.333  3.5e+06",
    ]


def test_left_columns_and_no_header():
    assert lines(left=("name",), header=False, formats={"rank": ".0f"}) == [
        "   7  a       0.500       12",
        "1234  longer  0.333  3500000",
    ]


def test_csv_has_a_header_and_the_raw_values():
    out = io.StringIO()
    print_table(ROWS, ("index", "score"), csv=True, file=out)
    assert list(csv.DictReader(io.StringIO(out.getvalue()))) == [
        {"index": "7", "score": "0.5"},
        {"index": "1234", "score": str(1 / 3)},
    ]


def test_rows_may_be_objects_and_stdout_is_looked_up_at_call_time():
    out = io.StringIO()
    with redirect_stdout(out):
        print_table([SimpleNamespace(train_index=3, influence=0.25)], ("train_index", "influence"))
    assert out.getvalue() == "train_index  influence\n          3      0.250\n"


def test_a_header_is_printed_even_without_rows():
    assert lines([]) == ["index  name  score  rank"]
