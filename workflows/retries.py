"""What the payment and refund sagas share for their quick ledger steps: the retry
policies, and how a ledger refusal reads."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from models.errors import LEDGER_ERRORS

QUICK = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=10),
    # Still failing after ~2.5 minutes is an outage or a bug, not a blip: give up, so the
    # saga compensates (void, refund, a failed refund's reservation given back) instead of
    # retrying for ever.
    maximum_attempts=20,
)
# For a step that must land because nothing can walk it back: the post after a payout or a
# card refund, the void that gives a refund's money back.
UNTIL_ANSWERED = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30)
)
# Backoffs longer than this wait on durable timers instead of holding the workflow task.
LOCAL_RETRY_THRESHOLD = timedelta(seconds=1)

# ApplicationError type (the error's class name) -> the code the API shows.
LEDGER_CODES = {cls.__name__: code for code, cls in LEDGER_ERRORS.items()}


def ledger_refusal_code(exc: ActivityError | ApplicationError) -> str | None:
    """The stable code of a ledger refusal (activities raise it named after its class), or
    None for any other failure. A local activity's failure arrives as the ApplicationError
    itself, a regular one's as the cause of an ActivityError."""
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError) and cause.type in LEDGER_CODES:
        return LEDGER_CODES[cause.type]
    return None
