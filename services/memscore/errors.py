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


def outage(e: BaseException) -> str | None:
    """Which backing store an exception says is unreachable ("job store", "object store",
    "broker"), or None when it is not an outage."""
    from .store.objects import StoreUnavailable

    if isinstance(e, StoreUnavailable):
        return "object store"
    try:
        import redis.exceptions as rx

        if isinstance(e, (rx.ConnectionError, rx.TimeoutError)):
            return "job store"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        from kombu.exceptions import OperationalError

        if isinstance(e, OperationalError):
            return "broker"
    except ImportError:  # pragma: no cover - kombu comes with celery
        pass
    return None
