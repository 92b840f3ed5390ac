"""`memscore plan`: what a scoring job will cost before anything is trained. The analytic
estimate (engine/cost.py: parameters, FLOPs, steps, memory), the shard and group sizes this
device and the service would choose, and the wall time from a short measured calibration on
this machine (engine/calibrate.py), beside the FLOP count at the measured FLOP/s.
`memscore submit --dry-run` prints the service's estimate with `print_estimate`."""

from __future__ import annotations

import argparse
import json

from .spec_flags import add_spec_flags, spec_from_args

GIB = 1 << 30


def add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="estimate a scoring job's FLOPs, memory and wall time (a few seconds' calibration, no training)"
    )
    add_spec_flags(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (the device to calibrate on)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=plan)


def plan(args: argparse.Namespace) -> int:
    from ..engine.calibrate import calibrate
    from .local import checked_dataset

    spec = spec_from_args(args)
    ds = checked_dataset(spec)  # as `run` reads it: Parquet columns, s3:// tables, the model's check
    if ds is None:
        return 2
    report = plan_report(ds, spec, calibrate(ds, spec, args.device))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(plan_lines(report)))
    return 0


def plan_report(ds, spec, cal) -> dict:
    """Everything `memscore plan` prints, as plain data (its `--json`)."""
    from ..engine.calibrate import facts_of

    cost = cal.cost
    report = {
        "dataset": {"name": ds.name, "n_train": ds.n_train, "n_test": ds.n_test, "num_classes": ds.num_classes,
                    "kind": ds.kind, "feature_shape": list(ds.feature_shape)},
        "model": cal.arch,
        "models": cal.models,
        "steps": cal.steps,
        "shard_size": cal.shard_size,
        "shards": -(-cal.models // cal.shard_size),
        "device": cal.device,
        "group_size": max(cal.group_sizes),
        "groups": len(cal.group_sizes),
        "calibration": {
            "seconds": cal.calibration_seconds,
            "groups": [vars(t) for t in cal.timings],
            "measured_flops_per_second": cal.measured_flops_per_second,
        },
        "seconds": cal.seconds,
        "seconds_range": list(cal.seconds_range),
        "seconds_parts": {"train": cal.train_seconds, "eval": cal.eval_seconds, "extra_metrics": cal.extra_seconds,
                          "reduce": cal.reduce_seconds},
        "flop_seconds": cal.flop_seconds(),
    }  # fmt: skip
    report.update(
        params=cost.model.params,
        forward_flops=cost.model.forward_flops,
        batch=cost.batch,
        flops_per_model=cost.train_flops_per_model,
        total_flops=cost.total_flops(cal.models),
        group_peak_bytes=cost.shard_bytes(max(cal.group_sizes)),
        reduce_peak_bytes=cost.reduce_bytes,
        service=service_plan(spec, facts_of(ds), cost.model),
    )
    return report


def service_plan(spec, facts, model=None) -> dict:
    """The gateway's admission and estimate for this job at this environment's MEMSCORE_*
    settings: {"refused": why} when it would be RESOURCE_EXHAUSTED."""
    import dataclasses

    from ..dataplane.admission import admit
    from ..dataplane.estimates import scoring_estimate
    from ..errors import ResourceExhausted
    from ..settings import Settings

    settings = Settings()
    try:
        shard_size = admit(spec, facts, settings, model)
    except ResourceExhausted as e:
        return {"refused": str(e)}
    est = scoring_estimate(dataclasses.replace(spec, shard_size=shard_size), facts, settings)
    return {**dataclasses.asdict(est), "worker_memory_bytes": settings.worker_memory_bytes}


def _si(x: float) -> str:
    return f"{x:.3g}"


def _secs(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 1:
        return f"{s:.2g} s"
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min" if s < 36000 else f"{s / 3600:.1f} h"


def plan_lines(r: dict) -> list[str]:
    d = r["dataset"]
    shape = "×".join(str(v) for v in d["feature_shape"])
    lines = [
        f"{d['name']}: {d['n_train']} train / {d['n_test']} test, {d['num_classes']} classes, {d['kind']} {shape}",
        f"model: {r['model']}, {r['models']} models × {r['steps']} steps of {r['batch']} examples",
        f"parameters: {r['params']:,} per model; forward FLOPs per example: {_si(r['forward_flops'])}",
        f"FLOPs: {_si(r['flops_per_model'])} per model (training and one evaluation pass), "
        f"{_si(r['total_flops'])} total",
        f"this machine ({r['device']}): {r['shards']} shard(s) of {r['shard_size']}, trained in {r['groups']} "
        f"group(s) of up to {r['group_size']} models at once (ensemble.fitting_group_size), peak memory per group "
        f"~{r['group_peak_bytes'] / GIB:.2f} GiB",
        f"reduce: peak memory ~{r['reduce_peak_bytes'] / GIB:.2f} GiB",
    ]
    lines += _service_lines(r["service"])
    lines += _time_lines(r)
    return lines


def _service_lines(svc: dict) -> list[str]:
    if "refused" in svc:
        return [f"service: would refuse this job (RESOURCE_EXHAUSTED): {svc['refused']}"]
    return [
        f"service: shard size {svc['shard_size']} (admission, MEMSCORE_WORKER_MEMORY_BYTES "
        f"{svc['worker_memory_bytes'] / GIB:.1f} GiB), {svc['shards']} shard(s), peak memory per shard "
        f"~{svc['shard_peak_bytes'] / GIB:.2f} GiB, {_secs(svc['seconds'])} at MEMSCORE_WORKER_FLOPS "
        f"{_si(svc['flops_per_second'])}"
    ]


def _time_lines(r: dict) -> list[str]:
    from ..engine.calibrate import ESTIMATE_OVER_MEASURED

    low, high = ESTIMATE_OVER_MEASURED
    cal, parts = r["calibration"], r["seconds_parts"]
    steps = ", ".join(
        f"{t['size']} models: {t['step_seconds'] * 1e3:.1f} ms a step, "
        f"{t['eval_seconds_per_example'] * 1e6:.1f} µs an evaluated example"
        for t in cal["groups"]
    )
    rate = cal["measured_flops_per_second"]
    lines = [
        f"calibration ({cal['seconds']:.1f} s on {r['device']}): {steps}"
        + (f"; {_si(rate)} FLOP/s measured" if rate else ""),
        f"estimated wall time: {_secs(r['seconds'])} (training {_secs(parts['train'])}, evaluation "
        f"{_secs(parts['eval'])}, opt-in metrics {_secs(parts['extra_metrics'])}, reduce {_secs(parts['reduce'])})",
        f"  likely {_secs(r['seconds_range'][0])} to {_secs(r['seconds_range'][1])}: the estimate was {low}-{high}x "
        "the measured time in 9 of 10 test runs (docs/performance.md); other load on this machine makes it longer",
    ]
    if r["flop_seconds"] is not None:
        lines.append(
            f"FLOP-based: {_secs(r['flop_seconds'])} at the measured {_si(rate)} FLOP/s (training and evaluation only)"
        )
    return lines


def print_estimate(est) -> None:
    """A SubmitJobResponse's JobEstimate (`memscore submit --dry-run`)."""
    print(f"model: {est.model or 'unknown'}, {est.steps} steps a model, {est.params:,} parameters")
    print(f"FLOPs: {_si(est.forward_flops)} forward per example, {_si(est.total_flops)} for the whole job")
    print(f"shards: {est.shards} of {est.shard_size} models, peak memory ~{est.shard_peak_bytes / GIB:.2f} GiB each")
    print(f"reduce: peak memory ~{est.reduce_peak_bytes / GIB:.2f} GiB")
    print(
        f"time: {_secs(est.seconds)} of one worker at {_si(est.flops_per_second)} FLOP/s (MEMSCORE_WORKER_FLOPS): the "
        "FLOP count at the configured rate, not measured (training and evaluation only; at a measured rate it was "
        "0.45-1.03x the measured time, docs/performance.md; `memscore plan` calibrates on a machine)"
    )
