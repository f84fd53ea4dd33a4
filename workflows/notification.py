"""How events reach the world: ``announce`` and the EventDeliveryWorkflow.

A workflow whose business object reaches a terminal state (a payment, a refund) calls
``announce``: it records the event and mails the customer inline (local activities), and
starts an EventDeliveryWorkflow (workflow id = the event id) only for what needs durable
retries: webhooks to the app's endpoints, or a mail the inline attempt could not send. That
child is started with parent close policy ABANDON, so the parent finishes without waiting
for slow receivers, and a second start for the same event is refused by Temporal.

EventDeliveryWorkflow:

Steps:
1. ``record_event``: store the event once; learn the endpoints of its app that are
   enabled and subscribed to its type.
2. Concurrently: ``deliver_webhook`` per endpoint, retried with backoff for up to three
   days (a 410 Gone, or an endpoint deleted or disabled meanwhile, stops its retries), and
   ``email_customer`` when the event concerns a customer.
3. Return a summary with one line per endpoint and the email's outcome. One receiver that
   never accepts does not keep the others or the email from completing.

Every attempt is written to ``webhook_deliveries`` by the activity itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from models.notifications import (
        DELIVER_WEBHOOK,
        EMAIL_CUSTOMER,
        ENDPOINT_DISABLED,
        ENDPOINT_GONE,
        EVENT_DELIVERY_WORKFLOW,
        FINAL_DELIVERY_ERRORS,
        RECORD_EVENT,
        DeliveryResult,
        DeliverySummary,
        EmailOutcome,
        PlatformEvent,
        RecordedEvent,
        WebhookDelivery,
        WebhookOutcome,
        WebhookOutcomeStatus,
    )

# Receivers go down for maintenance, deploys and outages: keep trying for days, backing
# off to one attempt an hour (5 s, 10 s, 20 s, … 1 h; ~80 attempts over three days).
WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(hours=1),
    non_retryable_error_types=list(FINAL_DELIVERY_ERRORS),
)
WEBHOOK_DEADLINE = timedelta(days=3)
# One attempt: the sender's own HTTP timeout plus the database writes around it.
WEBHOOK_ATTEMPT_TIMEOUT = timedelta(seconds=30)
QUICK_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
# A payment's inline mail: one attempt, as it holds the payment's workflow task (and one of
# the worker's slots for them) open; a failed one is retried by an EventDeliveryWorkflow.
# Bounded by attempts: the SDK did not end a local activity's retries at its
# schedule-to-close timeout (a one-minute one kept retrying for minutes).
INLINE_MAIL_RETRY = RetryPolicy(maximum_attempts=1)
# Our own database, SMTP relay and Keycloak: the same patience as a receiver's.
LOCAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(hours=1)
)

_OUTCOME_OF_ERROR: dict[str, WebhookOutcomeStatus] = {
    ENDPOINT_GONE: "endpoint_gone",
    ENDPOINT_DISABLED: "endpoint_disabled",
}


def _reason(error: ActivityError) -> tuple[str | None, str]:
    """The ApplicationError type (if any) and the message behind an activity's failure."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return cause.type, cause.message
    return None, str(cause or error)


@workflow.defn(name=EVENT_DELIVERY_WORKFLOW)
class EventDeliveryWorkflow:
    @workflow.run
    async def run(self, event: PlatformEvent) -> DeliverySummary:
        recorded = await workflow.execute_activity(
            RECORD_EVENT,
            event,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=WEBHOOK_DEADLINE,
            retry_policy=LOCAL_RETRY,
            result_type=RecordedEvent,
        )
        workflow.set_current_details(
            f"**{event.type} {event.id}** · {len(recorded.endpoint_ids)} endpoint(s)"
            f" · email: {'yes' if event.customer_id else 'no'}"
        )
        webhooks = asyncio.gather(
            *(self._deliver(event.id, endpoint) for endpoint in recorded.endpoint_ids)
        )
        email: EmailOutcome | None = None
        if event.customer_id:
            outcomes, email = await asyncio.gather(webhooks, self._email(event))
        else:
            outcomes = await webhooks
        return DeliverySummary(
            event_id=event.id, event_type=event.type, webhooks=list(outcomes), email=email
        )

    async def _deliver(self, event_id: str, endpoint_id: str) -> WebhookOutcome:
        try:
            result = await workflow.execute_activity(
                DELIVER_WEBHOOK,
                WebhookDelivery(event_id=event_id, endpoint_id=endpoint_id),
                start_to_close_timeout=WEBHOOK_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=WEBHOOK_DEADLINE,
                retry_policy=WEBHOOK_RETRY,
                result_type=DeliveryResult,
            )
        except ActivityError as exc:
            kind, message = _reason(exc)
            status = _OUTCOME_OF_ERROR.get(kind or "", "failed")
            return WebhookOutcome(endpoint_id=endpoint_id, status=status, error=message)
        return WebhookOutcome(endpoint_id=endpoint_id, status="delivered", attempt=result.attempt)

    async def _email(self, event: PlatformEvent) -> EmailOutcome:
        try:
            outcome: EmailOutcome = await workflow.execute_activity(
                EMAIL_CUSTOMER,
                event,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=WEBHOOK_DEADLINE,
                retry_policy=LOCAL_RETRY,
                result_type=EmailOutcome,
            )
        except ActivityError as exc:
            return EmailOutcome(status="failed", error=_reason(exc)[1])
        return outcome


async def announce(event: PlatformEvent, recorded: RecordedEvent | None = None) -> None:
    """Announce an event from inside another workflow (a payment, a refund).

    The event is recorded and the customer mailed right there, as local activities: the
    common case costs the caller no extra workflow task and no second workflow. A caller
    that recorded the event with its own final write passes what that returned
    (``recorded``), and the record step is skipped. Only what may need hours or days of
    retries gets an ``EventDeliveryWorkflow`` of its own (started abandoned, one per event
    id): webhooks to the app's endpoints, and a mail whose one inline attempt failed.
    """
    if recorded is None:
        recorded = await workflow.execute_local_activity(
            RECORD_EVENT,
            event,
            result_type=RecordedEvent,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=QUICK_RETRY,
        )
    mailed = event.customer_id is None
    if not mailed:
        try:
            await workflow.execute_local_activity(
                EMAIL_CUSTOMER,
                event,
                result_type=EmailOutcome,
                start_to_close_timeout=timedelta(seconds=15),
                retry_policy=INLINE_MAIL_RETRY,
            )
            mailed = True
        except (ActivityError, ApplicationError) as exc:
            workflow.logger.warning("mail for %s handed to delivery: %s", event.id, exc)
    if not recorded.endpoint_ids and mailed:
        return
    # The delivery workflow mails only what was not mailed here.
    handed = event if not mailed else dataclasses.replace(event, customer_id=None)
    with contextlib.suppress(WorkflowAlreadyStartedError):  # announced already
        await workflow.start_child_workflow(
            EVENT_DELIVERY_WORKFLOW,
            handed,
            id=event.id,
            parent_close_policy=ParentClosePolicy.ABANDON,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )


if __name__ == "__main__":  # the sandbox re-imports this module; nothing runs on import
    pass
