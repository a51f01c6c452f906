"""The error tree: recoverability, TimeoutError kinship, and the Celery round trip."""

from __future__ import annotations

import pickle

import pytest

from bridge import errors


def test_retryable_errors_are_exactly_the_recoverable_ones() -> None:
    retryable = errors.RETRYABLE_ERRORS
    for cls in (errors.RateLimitedError, errors.ServerError, errors.ConnectError):
        assert issubclass(cls, retryable)
    for cls in (errors.AuthenticationError, errors.NotFoundError, errors.JobFailed):
        assert not issubclass(cls, retryable)


def test_timeouts_are_timeout_errors() -> None:
    for cls in (errors.WaitTimeout, errors.JobTimedOut, errors.ReadTimeoutError):
        assert issubclass(cls, TimeoutError)


@pytest.mark.parametrize(
    "cls", [errors.JobFailed, errors.JobCancelled, errors.JobTimedOut, errors.JobExpired]
)
def test_job_errors_rebuild_from_args_like_celery_does(cls: type[errors.JobError]) -> None:
    original = cls("it broke", None, "ep1", "job-9", {"detail": "oom"})
    rebuilt = cls(*original.args)  # what Celery's result backend does with JSON results
    assert str(rebuilt) == str(original) == "it broke (endpoint=ep1, job=job-9)"
    assert (rebuilt.status, rebuilt.job_id, rebuilt.error) == (
        cls.default_status,
        "job-9",
        {"detail": "oom"},
    )
    assert pickle.loads(pickle.dumps(original)).job_id == "job-9"  # noqa: S301 - our own bytes


def test_request_rejected_round_trips_and_reads_well() -> None:
    original = errors.RequestRejected("unknown route 'x'", "unknown_route", "r-1")
    rebuilt = errors.RequestRejected(*original.args)
    assert str(rebuilt) == "request rejected (unknown_route): unknown route 'x'"
    assert (rebuilt.reason, rebuilt.request_id) == ("unknown_route", "r-1")
