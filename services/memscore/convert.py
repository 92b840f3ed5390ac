"""Protobuf <-> domain conversions both gRPC servers share: job records, specs, progress,
events and anytime summaries."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from .api.v1 import job_pb2

STATE_TO_PB = {
    "QUEUED": job_pb2.JOB_STATE_QUEUED,
    "RUNNING": job_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": job_pb2.JOB_STATE_SUCCEEDED,
    "FAILED": job_pb2.JOB_STATE_FAILED,
    "CANCELLED": job_pb2.JOB_STATE_CANCELLED,
}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}
KIND_TO_PB = {"scoring": job_pb2.JOB_KIND_SCORING, "exposure": job_pb2.JOB_KIND_EXPOSURE}


def _set_fields(msg, always: tuple[str, ...] = ()) -> dict:
    """The fields of a spec message that carry a value. In proto3 a zero or empty value means
    "the default", which the engine's spec dataclass supplies; `optional` fields say
    explicitly whether they were set (their 0 is a value)."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.is_repeated:
            value = list(value)
        if (msg.HasField(f.name) if f.has_presence else bool(value)) or f.name in always:
            out[f.name] = value
    return out


def spec_from_pb(spec: job_pb2.JobSpec) -> tuple[str, dict]:
    """(kind, spec dict) from a JobSpec; unset fields take the engine dataclass's defaults."""
    which = spec.WhichOneof("kind")
    if which == "scoring":
        return "scoring", _set_fields(spec.scoring, always=("dataset",))  # "" is reported as missing
    if which == "exposure":
        return "exposure", _set_fields(spec.exposure)
    return "", {}


def spec_to_pb(kind: str, spec: dict) -> job_pb2.JobSpec:
    if kind == "scoring":
        return job_pb2.JobSpec(scoring=job_pb2.ScoringSpec(**spec))
    return job_pb2.JobSpec(exposure=job_pb2.ExposureSpec(**spec))


def _ts(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def progress_to_pb(rec) -> job_pb2.JobProgress:
    p = job_pb2.JobProgress(
        shards_done=rec.shards_done,
        shards_total=rec.shards_total,
        models_done=rec.models_done,
        models_total=rec.models_total,
    )
    if rec.eta_s is not None:
        p.eta_seconds = float(rec.eta_s)
    return p


# AnytimeSummary's LiRA figures (engine.membership.anytime_fields)
MEMBERSHIP_FIELDS = tuple(
    f"membership_{f}{end}" for f in ("auc", "tpr_at_fpr_0_001", "tpr_at_fpr_0_01") for end in ("", "_lower", "_upper")
) + ("membership_chance_auc",)


def anytime_to_pb(rec) -> job_pb2.AnytimeSummary:
    """The figures the summary has; one without an estimate yet stays unset (absent)."""
    s = rec.summary or {}
    out = job_pb2.AnytimeSummary(models_done=int(s.get("models_done") or rec.models_done))
    for name in (
        "mean_memorization",
        "fraction_memorized",
        "mean_test_accuracy",
        "memorization_split_half",
        "memorization_reliability",
        "memorization_soft_reliability",
        "fraction_memorized_corrected",
        "fraction_memorized_lower",
        "fraction_memorized_upper",
        *MEMBERSHIP_FIELDS,
        "critical_sample_ratio",
        "critical_sample_ratio_stderr",
    ):
        if s.get(name) is not None:
            setattr(out, name, float(s[name]))
    for name in (
        "memorization_models_for_0_95",
        "count_memorization_lower_ge_0_25",
        "influence_pairs_above_threshold",
        "influence_pairs_significant",
        "critical_sample_ratio_epoch",
    ):
        if s.get(name) is not None:
            setattr(out, name, int(s[name]))
    return out


def job_to_pb(rec) -> job_pb2.Job:
    return job_pb2.Job(
        job_id=rec.job_id,
        kind=KIND_TO_PB.get(rec.kind, job_pb2.JOB_KIND_UNSPECIFIED),
        state=STATE_TO_PB[rec.state],
        spec=spec_to_pb(rec.kind, rec.spec),
        request_id=rec.request_id,
        create_time=_ts(rec.created_at),
        update_time=_ts(rec.updated_at),
        progress=progress_to_pb(rec),
        error=rec.error,
        anytime=anytime_to_pb(rec),
        artifacts=sorted(rec.results),
        message=rec.message,
        cancel_requested=rec.cancel_requested,
        version=rec.version,
    )


def event_to_pb(rec) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        state=STATE_TO_PB[rec.state],
        progress=progress_to_pb(rec),
        message=rec.error if rec.state == "FAILED" else rec.message,
        event_time=_ts(rec.updated_at),
        version=rec.version,
        anytime=anytime_to_pb(rec),
    )
