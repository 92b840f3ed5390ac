"""The `memscore` command.

One idea per file: `tables` prints every table and CSV, `spec_flags` holds the scoring-spec flags
from . import local, models, plan, report, service, up
"""

from __future__ import annotations

import argparse

from . import local, models, plan, report, service, up

# Order here is the order in `memscore --help`.
COMMANDS = [
    local.add_run,
    local.add_exposure,
    plan.add_plan,
    up.add_up,
    service.add_submit,
    service.add_watch,
    service.add_status,
    service.add_results,
    service.add_influence,
    service.add_cancel,
    service.add_extend,
    service.add_upload,
    service.add_health,
    report.add_report,
    report.add_audit,
    models.add_models,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memscore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
