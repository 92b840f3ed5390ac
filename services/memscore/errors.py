"""Domain errors of the service layer. One gRPC interceptor (`rpc.DomainErrorInterceptor`) maps
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
