"""Retry policies the payment and refund sagas share for their quick ledger steps."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

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
