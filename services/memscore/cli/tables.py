"""Every table the CLI prints, and every CSV file it writes, goes through `print_table`."""

from __future__ import annotations

import csv as csvlib
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence

from ..engine.catalog import SCORE_COLUMNS

# The ranked-examples table of `run` and `results` (their CSV files have every score column):
# no standard errors (the interval says it for memorization; the CSV has them all) and not these.
_NOT_PRINTED = (
    "memorization_soft_lower",
    "memorization_soft_upper",
    "in_sample_accuracy",
    "predicted_label_heldout",
    "adv_distance_l2",  # the run table is wide enough; the CSV and parquet have them
    "adv_distance_l2_heldout",
    "adv_distance_linf",
    "adv_distance_linf_heldout",
    "learning_speed",  # --metrics dynamics only: NaN / False otherwise
    "first_learned_epoch",
    "critical",
    "critical_fraction",
    "privacy_risk_pvalue",
    "privacy_level",  # --metrics dp only: NaN otherwise
    "privacy_level_lower",
    "privacy_level_upper",
)
RANKED_COLUMNS = tuple(c for c in SCORE_COLUMNS if c not in _NOT_PRINTED and not c.endswith("_stderr"))


def print_table(
    rows: Iterable,
    columns: Sequence[str],
    *,
    formats: Mapping[str, str] | None = None,
    left: Collection[str] = (),
    header: bool = True,
    csv: bool = False,
    file=None,
) -> None:
    """Print `rows` (dicts, or objects such as protobuf messages, with a value per column) as
    aligned `columns`, each as wide as its widest cell, two spaces apart.

    formats: a format spec per column (default: ".3f" for floats, str() for the rest).
    left: columns aligned left; the others are aligned right.
    csv: write the raw values as CSV instead (after a header row).
    file: where to write; default sys.stdout, looked up at call time so redirections apply.
    """
    file = file or sys.stdout
    values = [[_cell(row, c) for c in columns] for row in rows]
    if csv:
        writer = csvlib.writer(file)
        if header:
            writer.writerow(columns)
        writer.writerows(values)
        return
    formats = formats or {}
    lines = [list(columns)] if header else []
    lines += [[_format(v, formats.get(c)) for c, v in zip(columns, vs)] for vs in values]
    if not lines:
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for line in lines:
        cells = (f"{s:<{w}}" if c in left else f"{s:>{w}}" for c, s, w in zip(columns, line, widths))
        print("  ".join(cells).rstrip(), file=file)


def _cell(row, column: str):
    return row[column] if isinstance(row, Mapping) else getattr(row, column)


def _format(value, spec: str | None) -> str:
    if spec is not None:
        return format(value, spec)
    return format(value, ".3f") if isinstance(value, float) else str(value)
