"""EventDeliveryWorkflow on the time-skipping test server: retries with backoff, concurrent
deliveries, the email, and endpoints that are gone."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.notifications import (
    DELIVER_WEBHOOK,
    EMAIL_CUSTOMER,
    ENDPOINT_DISABLED,
    ENDPOINT_GONE,
    RECORD_EVENT,
    DeliveryResult,
    DeliverySummary,
    EmailOutcome,
    PlatformEvent,
    RecordedEvent,
    WebhookDelivery,
    event_id,
    payment_data,
)
from workflows.notification import EventDeliveryWorkflow


@dataclass
class World:
    """What the fake activities do and what they saw."""

    endpoints: list[str] = field(default_factory=list)
    failures_before_success: dict[str, int] = field(default_factory=dict)
    final_error: dict[str, str] = field(default_factory=dict)  # endpoint -> error type
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (event, endpoint)
    attempt_times: dict[str, list[float]] = field(default_factory=dict)
    in_flight: int = 0
    most_in_flight: int = 0
    all_in_flight: asyncio.Event = field(default_factory=asyncio.Event)
    wait_for_all: bool = False
    emails: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)


def fake_activities(world: World) -> list[Callable[..., Awaitable[object]]]:
    """The three activities by name, acting on ``world``."""

    @activity.defn(name=RECORD_EVENT)
    async def record_event(event: PlatformEvent) -> RecordedEvent:
        world.recorded.append(event.id)
        return RecordedEvent(event_id=event.id, endpoint_ids=list(world.endpoints))

    @activity.defn(name=DELIVER_WEBHOOK)
    async def deliver_webhook(delivery: WebhookDelivery) -> DeliveryResult:
        endpoint = delivery.endpoint_id
        world.attempts[endpoint] += 1
        started = activity.info().started_time.timestamp()
        world.attempt_times.setdefault(endpoint, []).append(started)
        if endpoint in world.final_error:
            # Raised as an ordinary (retryable) error: only the workflow's policy stops it.
            raise ApplicationError("no more", type=world.final_error[endpoint])
        if world.attempts[endpoint] <= world.failures_before_success.get(endpoint, 0):
            raise ApplicationError("the receiver answered 500", type="WebhookFailed")
        world.in_flight += 1
        world.most_in_flight = max(world.most_in_flight, world.in_flight)
        try:
            if world.wait_for_all:
                if world.in_flight == len(world.endpoints):
                    world.all_in_flight.set()
                # Each delivery waits for all the others to have started: only concurrent
                # deliveries get past this.
                await asyncio.wait_for(world.all_in_flight.wait(), timeout=10)
            world.accepted.append((delivery.event_id, endpoint))
        finally:
            world.in_flight -= 1
        return DeliveryResult(
            endpoint_id=endpoint, status_code=200, attempt=activity.info().attempt
        )

    @activity.defn(name=EMAIL_CUSTOMER)
    async def email_customer(event: PlatformEvent) -> EmailOutcome:
        world.emails.append(event.id)
        return EmailOutcome(status="sent")

    return [record_event, deliver_webhook, email_customer]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def queue(workflow_env: WorkflowEnvironment, world: World) -> AsyncIterator[str]:
    name = f"notify-{uuid.uuid4()}"
    async with Worker(
        workflow_env.client,
        task_queue=name,
        workflows=[EventDeliveryWorkflow],
        activities=fake_activities(world),
    ):
        yield name


def an_event(*, client_id: str | None = "bfc-app", customer_id: str | None = "user-alice"):
    return PlatformEvent(
        id=event_id(f"pay_{uuid.uuid4().hex}", "payment.succeeded"),
        type="payment.succeeded",
        created_at="2026-11-26T12:00:00+00:00",
        client_id=client_id,
        customer_id=customer_id,
        data=payment_data(
            payment_id="pay_x", kind="topup", amount=1050, currency="EUR", status="succeeded"
        ),
    )


async def deliver(env: WorkflowEnvironment, queue: str, event: PlatformEvent) -> DeliverySummary:
    return await env.client.execute_workflow(
        EventDeliveryWorkflow.run, event, id=event.id, task_queue=queue
    )


async def test_a_receiver_failing_twice_gets_the_event_once_after_backoff(
    workflow_env: WorkflowEnvironment, queue: str, world: World
) -> None:
    world.endpoints = ["we_flaky"]
    world.failures_before_success = {"we_flaky": 2}
    event = an_event()
    summary = await deliver(workflow_env, queue, event)

    assert world.attempts["we_flaky"] == 3
    assert world.accepted == [(event.id, "we_flaky")]  # accepted exactly once
    (outcome,) = summary.webhooks
    assert (outcome.endpoint_id, outcome.status, outcome.attempt) == ("we_flaky", "delivered", 3)
    times = world.attempt_times["we_flaky"]
    # Backoff: 5 s before the second attempt, 10 s before the third.
    assert [round(b - a) for a, b in itertools.pairwise(times)] == [5, 10]
    assert summary.email is not None and summary.email.status == "sent"


async def test_several_endpoints_are_delivered_concurrently(
    workflow_env: WorkflowEnvironment, queue: str, world: World
) -> None:
    world.endpoints = ["we_a", "we_b", "we_c"]
    world.wait_for_all = True
    event = an_event()
    summary = await deliver(workflow_env, queue, event)

    assert world.most_in_flight == 3
    assert sorted(world.accepted) == [(event.id, e) for e in ("we_a", "we_b", "we_c")]
    assert [(w.endpoint_id, w.status) for w in summary.webhooks] == [
        ("we_a", "delivered"),
        ("we_b", "delivered"),
        ("we_c", "delivered"),
    ]


async def test_without_endpoints_only_the_email_goes_out(
    workflow_env: WorkflowEnvironment, queue: str, world: World
) -> None:
    event = an_event()
    summary = await deliver(workflow_env, queue, event)

    assert world.recorded == [event.id]
    assert sum(world.attempts.values()) == 0
    assert summary.webhooks == []
    assert world.emails == [event.id]
    assert summary.email == EmailOutcome(status="sent")


async def test_an_event_without_a_customer_sends_no_email(
    workflow_env: WorkflowEnvironment, queue: str, world: World
) -> None:
    world.endpoints = ["we_a"]
    summary = await deliver(workflow_env, queue, an_event(customer_id=None))
    assert world.emails == []
    assert summary.email is None
    assert [w.status for w in summary.webhooks] == ["delivered"]


@pytest.mark.parametrize(
    ("error", "status"),
    [(ENDPOINT_DISABLED, "endpoint_disabled"), (ENDPOINT_GONE, "endpoint_gone")],
)
async def test_a_deleted_or_gone_endpoint_stops_after_one_attempt(
    workflow_env: WorkflowEnvironment, queue: str, world: World, error: str, status: str
) -> None:
    world.endpoints = ["we_deleted", "we_fine"]
    world.final_error = {"we_deleted": error}
    summary = await deliver(workflow_env, queue, an_event())

    assert world.attempts["we_deleted"] == 1  # the retry policy does not try again
    outcomes = {w.endpoint_id: w.status for w in summary.webhooks}
    assert outcomes == {"we_deleted": status, "we_fine": "delivered"}
    assert summary.email is not None and summary.email.status == "sent"


async def test_a_receiver_that_never_accepts_is_given_up_after_three_days(
    workflow_env: WorkflowEnvironment, queue: str, world: World
) -> None:
    world.endpoints = ["we_down"]
    world.failures_before_success = {"we_down": 10_000}
    summary = await deliver(workflow_env, queue, an_event())

    (outcome,) = summary.webhooks
    assert outcome.status == "failed"
    times = world.attempt_times["we_down"]
    assert (
        timedelta(days=2, hours=22) <= timedelta(seconds=times[-1] - times[0]) <= timedelta(days=3)
    )
    # Backing off to at most an hour apart: dozens of attempts, not thousands.
    assert 70 <= world.attempts["we_down"] <= 90
    assert max(b - a for a, b in itertools.pairwise(times)) <= 3600 + 1
