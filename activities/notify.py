"""Notification activities: record an event, deliver it to one endpoint, mail the customer.

All three are safe to repeat. ``record_event`` inserts the event once. ``deliver_webhook``
writes every attempt to ``webhook_deliveries`` and sends nothing when an earlier attempt was
already accepted; otherwise the receiver may see the event again and de-duplicates on its
id. ``email_customer`` looks up whether this event's mail went out before sending it.

A payment mails its customer inline: ``email_customer`` as a local activity, which holds
the payment's workflow task open, and a worker has a bounded number of those
(``max_concurrent_workflow_tasks``). A mail relay or Keycloak that is down or hangs must
not hold them all (``InlineMailGate``): once an inline attempt fails, the inline attempts
of the next ``INLINE_PAUSE_SECONDS`` in this worker give up at once, and their mail goes to
the EventDeliveryWorkflow's durable retries (regular activities, which never pause); then
one inline attempt at a time tries, until one gets through. Found with the SMTP sink
stopped: 100 payments each held a task retrying its mail, and every later payment waited
in ``processing`` until the relay came back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from temporalio import activity
from temporalio.exceptions import ApplicationError

from infra.event_log import EventLog
from infra.identity import MailAddresses
from infra.notifier import SMTP_TIMEOUT_SECONDS, Notifier
from infra.webhook_store import WebhookStore
from infra.webhooks import EndpointGone, UnusableURL, WebhookFailed, WebhookSender, event_body
from models.notifications import (
    DELIVER_WEBHOOK,
    EMAIL_CUSTOMER,
    ENDPOINT_DISABLED,
    ENDPOINT_GONE,
    INLINE_MAIL_PAUSED,
    RECORD_EVENT,
    DeliveryResult,
    EmailOutcome,
    PlatformEvent,
    RecordedEvent,
    WebhookDelivery,
    format_amount,
)

INLINE_PAUSE_SECONDS = 30.0
# Each wait on the relay in an inline attempt: a healthy relay answers in milliseconds, and
# the mail goes to durable delivery (which waits the notifier's full timeout) when it does
# not. A relay that hangs holds the payments whose mails reach it before the first failure
# closes the gate: for this long, not ten seconds.
INLINE_SMTP_TIMEOUT_SECONDS = 3.0


class InlineMailGate:
    """Whether an inline mail may try now: always, until one fails; then none for
    ``pause`` seconds; then one at a time, until one succeeds. One at a time, as a relay
    that hangs holds each attempt for its whole timeout: were every payment let through
    when the pause ends, they would all wait on it together again. Any mail that goes out
    (inline or durable) opens the gate; a probe that never reached the relay (no address,
    sent before) leaves it closed and lets the next one try. Thread-safe: sync activities
    run in an executor."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, pause: float = INLINE_PAUSE_SECONDS
    ) -> None:
        self._clock = clock
        self._pause = pause
        self._lock = threading.Lock()
        self._closed_until: float | None = None  # None: open
        self._probing = False

    def admit(self) -> Literal["open", "probe"] | None:
        """Whether to try: ``"open"``, yes; ``"probe"``, yes, as the one mail that does while
        the gate is closed (it reports back, ``untried`` included); None, give up at once."""
        with self._lock:
            if self._closed_until is None:
                return "open"
            if self._probing or self._clock() < self._closed_until:
                return None
            self._probing = True
            return "probe"

    def succeeded(self) -> None:
        """A mail went out: the relay works."""
        with self._lock:
            self._closed_until, self._probing = None, False

    def untried(self) -> None:
        """The probe ended without asking the relay: that says nothing about it."""
        with self._lock:
            self._probing = False

    def failed(self) -> None:
        with self._lock:
            self._closed_until, self._probing = self._clock() + self._pause, False


def customer_message(event: PlatformEvent) -> tuple[str, str]:
    """Subject and body of the customer's mail: what happened, in plain words, with ids
    and amounts only (the mail leaves our systems; it names no one)."""
    data = event.data
    payment = f"payment {data['id']}" if data.get("id") else "payment"
    amount = format_amount(data.get("amount"), data.get("currency"))
    status = event.type.removeprefix("payment.").replace("_", " ")
    decline = f" (reason: {data['decline_code']})" if data.get("decline_code") else ""
    refunded = format_amount(data.get("amount_refunded"), data.get("currency"))
    what = {
        "payment.succeeded": f"Your {payment} of {amount} succeeded.",
        "payment.declined": f"Your {payment} of {amount} was declined{decline}.",
        "payment.failed": f"Your {payment} of {amount} could not be completed.",
        "payment.canceled": f"Your {payment} of {amount} was canceled.",
        "payment.refunded": f"Your {payment} of {amount} was refunded in full.",
        "payment.partially_refunded": f"{refunded} of your {payment} of {amount} was refunded.",
        "payment.refund_failed": f"A refund of your {payment} of {amount} could not be "
        f"made{decline}.",
    }.get(event.type, f"Your {payment} of {amount}: {status}.")
    subject = f"Your {payment}: {status}"
    body = (
        f"Hello,\n\n{what}\n\n"
        f"Reference: {event.id}\nTime: {event.created_at}\n\n"
        "This message was sent automatically by BFC Payments.\n"
    )
    return subject, body


class NotifyActivities:
    def __init__(
        self,
        store: WebhookStore,
        events: EventLog,
        sender: WebhookSender,
        notifier: Notifier,
        addresses: MailAddresses,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._events = events
        self._sender = sender
        self._notifier = notifier
        self._addresses = addresses
        self._inline_gate = InlineMailGate(clock)

    @activity.defn(name=RECORD_EVENT)
    async def record_event(self, event: PlatformEvent) -> RecordedEvent:
        return RecordedEvent(event_id=event.id, endpoint_ids=await self._events.record(event))

    @activity.defn(name=DELIVER_WEBHOOK)
    async def deliver_webhook(self, delivery: WebhookDelivery) -> DeliveryResult:
        attempt = activity.info().attempt
        store = self._store
        endpoint = await asyncio.to_thread(store.get_endpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            raise ApplicationError(
                f"endpoint {delivery.endpoint_id} is deleted or disabled",
                type=ENDPOINT_DISABLED,
                non_retryable=True,
            )
        event = await asyncio.to_thread(store.get_event, delivery.event_id)
        if event is None:  # record_event runs first; this is a bug, not the receiver's fault
            raise ApplicationError(f"event {delivery.event_id} was never recorded")
        earlier = await asyncio.to_thread(
            store.accepted_attempt, event_id=event.id, endpoint_id=endpoint.id
        )
        if earlier is not None and earlier.status_code is not None:
            # Accepted before and the result was lost (a worker restart): do not resend.
            return DeliveryResult(
                endpoint_id=endpoint.id, status_code=earlier.status_code, attempt=earlier.attempt
            )
        body = event_body(
            event_id=event.id, event_type=event.type, created_at=event.created_at, data=event.data
        )
        secrets = await asyncio.to_thread(store.signing_secrets, endpoint, datetime.now(UTC))
        failure: WebhookFailed | None = None
        try:
            accepted = await self._sender.send(
                url=endpoint.url,
                event_id=event.id,
                event_type=event.type,
                body=body,
                secrets=secrets,
            )
            status_code: int | None = accepted.status_code
        except WebhookFailed as exc:
            failure, status_code = exc, exc.status_code
        await asyncio.to_thread(
            store.record_attempt,
            event_id=event.id,
            endpoint_id=endpoint.id,
            attempt=attempt,
            status_code=status_code,
            error=None if failure is None else str(failure),
        )
        if isinstance(failure, EndpointGone):
            reason = "the receiver answered 410 Gone"
            await asyncio.to_thread(store.disable_endpoint, endpoint.id, reason=reason)
            raise ApplicationError(str(failure), type=ENDPOINT_GONE, non_retryable=True)
        if failure is not None or status_code is None:
            # Retryable: Temporal tries again with backoff (the workflow's retry policy),
            # except for a URL that cannot be parsed, which days of retries cannot mend.
            raise ApplicationError(
                str(failure),
                type="WebhookFailed",
                non_retryable=isinstance(failure, UnusableURL),
            )
        return DeliveryResult(endpoint_id=endpoint.id, status_code=status_code, attempt=attempt)

    @activity.defn(name=EMAIL_CUSTOMER)
    def email_customer(self, event: PlatformEvent) -> EmailOutcome:
        inline = activity.info().is_local
        admitted = self._inline_gate.admit() if inline else "open"
        if admitted is None:
            raise ApplicationError(
                "an inline mail failed moments ago: this one goes to durable delivery",
                type=INLINE_MAIL_PAUSED,
                non_retryable=True,
            )
        try:
            outcome = self._email_customer(
                event, timeout=INLINE_SMTP_TIMEOUT_SECONDS if inline else SMTP_TIMEOUT_SECONDS
            )
        except Exception:
            if inline:
                self._inline_gate.failed()
            raise
        # Only a mail the relay took opens the gate: no address, or one sent before, never
        # reached it, and the relay may still be down.
        if outcome.status == "sent":
            self._inline_gate.succeeded()
        elif admitted == "probe":
            self._inline_gate.untried()
        return outcome

    def _email_customer(self, event: PlatformEvent, *, timeout: float) -> EmailOutcome:
        if event.customer_id is None:
            return EmailOutcome(status="no_address", error="the event concerns no customer")
        # A customer Keycloak does not know, or one without an address, gets no mail; an
        # unreachable Keycloak is retried (the lookup raises). Asked first: it is usually
        # answered from memory, the database is not.
        address = self._addresses.get(event.customer_id)
        if address is None:
            return EmailOutcome(status="no_address", error="the customer has no known address")
        if self._store.mail_sent(event.id):
            return EmailOutcome(status="already_sent")
        subject, body = customer_message(event)
        message_id = f"{event.id}.customer"
        # Sent, then marked: a crash in between sends it again on retry (with the same
        # Message-ID, which mail systems recognise); marking first could lose the mail.
        self._notifier.send(
            to=[address], subject=subject, body=body, message_id=message_id, timeout=timeout
        )
        self._store.mark_mail_sent(event.id, message_id=message_id)
        return EmailOutcome(status="sent")
