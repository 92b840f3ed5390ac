"""Domain errors of the service layer. One gRPC interceptor (`interceptors.DomainErrorInterceptor`) maps
them to status codes, so no handler repeats the mapping."""

from __future__ import annotations


class MemscoreError(Exception):
    """Base class; `str(e)` is the message users see."""


class InvalidArgument(MemscoreError):
    """The request is malformed. `violations` lists (field, description) for every problem."""

    def __init__(self, violations: list[tuple[str, str]] | str):
        if isinstance(violations, str):
            violations = [("", violations)]
        self.violations = list(violations)
        super().__init__("; ".join(f"{f}: {d}" if f else d for f, d in self.violations))


class NotFound(MemscoreError):
    pass


class ResourceExhausted(MemscoreError):
    pass


class FailedPrecondition(MemscoreError):
    """The job is not in a state that allows this (e.g. results of a failed job)."""


class Unavailable(MemscoreError):
    """A backing service (store, broker) cannot be reached; the client may retry."""


class Unauthenticated(MemscoreError):
    """The call carries no valid credentials (token or client certificate)."""


def store_outage_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean the object store or the job store (Redis) cannot be
    reached: what workers retry with backoff, and what `outage` names."""
    import redis.exceptions as rx

    from .store.objects import StoreUnavailable

    return (StoreUnavailable, rx.ConnectionError, rx.TimeoutError)


def outage(e: BaseException) -> str | None:
    """Which backing store an exception says is unreachable ("job store", "object store",
    "broker"), or None when it is not an outage."""
    from .store.objects import StoreUnavailable

    if isinstance(e, store_outage_errors()):
        return "object store" if isinstance(e, StoreUnavailable) else "job store"
    try:
        from kombu.exceptions import OperationalError

        if isinstance(e, OperationalError):
            return "broker"
    except ImportError:  # pragma: no cover - kombu comes with celery
        pass
    return None
