"""`memscore up`: gateway, results and a worker in this process (embedded: no Redis, no S3)."""

from __future__ import annotations

import argparse


def add_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run gateway, results and a worker in this process (embedded: no Redis, no S3)")
    p.add_argument("--gateway-port", type=int, default=None, help="default 50051 (MEMSCORE_GATEWAY_PORT)")
    p.add_argument("--results-port", type=int, default=None, help="default 50052 (MEMSCORE_RESULTS_PORT)")
    p.add_argument(
        "--bind",
        default=None,
        help="listen address (default MEMSCORE_BIND if set, else 127.0.0.1: without MEMSCORE_AUTH_TOKENS only a "
        "loopback address is served)",
    )
    p.add_argument("--broker", default=None, help="redis://HOST:PORT/DB: use Redis as broker and job store")
    p.add_argument("--store", default=None, help="s3://BUCKET (with MEMSCORE_S3_*) or a directory")
    p.add_argument("--home", default=None, help="state directory (default $MEMSCORE_HOME or ~/.memscore)")
    p.set_defaults(func=up)


def up(args: argparse.Namespace) -> int:
    import os
    import sys

    # The flags override the environment, which Settings reads.
    if args.home:
        os.environ["MEMSCORE_HOME"] = args.home
    if args.broker:
        os.environ["MEMSCORE_BROKER_URL"] = args.broker
        os.environ.setdefault("MEMSCORE_REDIS_URL", args.broker)
    if args.store:
        os.environ["MEMSCORE_STORE"] = args.store
    from .. import embedded
    from ..logs import configure_logging
    from ..rpc import run_until_signalled
    from ..settings import Settings

    s = Settings()
    configure_logging(s)
    bind = args.bind or os.environ.get("MEMSCORE_BIND") or "127.0.0.1"  # loopback: the no-auth default
    try:
        e = embedded.start(s, args.gateway_port, args.results_port, bind)
    except RuntimeError as err:  # e.g. no tokens on a public address, a TLS key that does not load
        print(f"memscore up: {err}", file=sys.stderr)
        return 2
    print(
        f"memscore up: gateway :{e.gateway_port}, results :{e.results_port}, store {e.runtime.objects.describe()}, "
        f"jobs {e.runtime.jobs.describe()}, broker {s.broker_url or 'memory:// (embedded)'}",
        flush=True,
    )
    try:
        run_until_signalled([])
    finally:
        e.stop()
    return 0
