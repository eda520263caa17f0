"""Exceptions that cross the boundary between runners, the job layer and the gateway."""

from __future__ import annotations


class PermanentError(Exception):
    """The job cannot succeed by trying again (bad input, missing artifact): fail without retry.

    Runners raise it (or an exception type listed in their kind's `permanent_errors`). The message is
    stored as the job's error, so write it for the user: name the field and the fix.
    """


class JobCancelled(Exception):
    """Raised inside a runner (by `ctx.check_cancelled()`) to stop because cancel was requested."""


class LeaseLostError(Exception):
    """This worker no longer owns the job (its lease expired and the job moved on); stop writing."""


class FieldError(ValueError):
    """A job spec refers to something that does not exist or is not allowed; the API answers 422.

    field: dotted path inside the spec, e.g. `dataset` or `source.path`.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
