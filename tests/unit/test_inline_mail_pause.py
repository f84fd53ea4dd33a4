"""A payment's inline mail gives up at once for a while after one failed, so a relay that is
down cannot hold every payment's workflow task; then one inline mail at a time tries until
one gets through; the durable delivery never pauses."""

from __future__ import annotations

import dataclasses
import smtplib
import socket
import threading
import time
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import INLINE_PAUSE_SECONDS, INLINE_SMTP_TIMEOUT_SECONDS, NotifyActivities
from infra.identity import MailAddresses
from infra.notifier import SMTP_TIMEOUT_SECONDS, Notifier
from infra.settings import Settings
from models.notifications import INLINE_MAIL_PAUSED, PlatformEvent


class Relay:
    """Stands in for the SMTP notifier: down or up, and what it was asked to send."""

    def __init__(self) -> None:
        self.down = True
        self.attempts: list[str] = []
        self.timeouts: list[float] = []
        self.hold: threading.Event | None = None  # set: a send waits for it (a hung relay)
        self.entered = threading.Event()

    def send(
        self, *, to: list[str], subject: str, body: str, message_id: str, timeout: float
    ) -> None:
        self.attempts.append(message_id)
        self.timeouts.append(timeout)
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(5)
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")


class SentMarks:
    def __init__(self) -> None:
        self.sent: set[str] = set()

    def mail_sent(self, event_id: str) -> bool:
        return event_id in self.sent

    def mark_mail_sent(self, event_id: str, *, message_id: str) -> None:
        self.sent.add(event_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _event(n: int) -> PlatformEvent:
    return PlatformEvent(
        id=f"evt_{n}",
        type="payment.succeeded",
        created_at="2026-11-26T12:00:00+00:00",
        client_id=None,
        customer_id="cus_1",
        data={"id": f"pay_{n}", "amount": 100, "currency": "EUR", "status": "succeeded"},
    )


@pytest.fixture
def relay() -> Relay:
    return Relay()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def activities(relay: Relay, clock: Clock) -> NotifyActivities:
    unused: Any = None
    return NotifyActivities(
        SentMarks(),  # type: ignore[arg-type]
        unused,
        unused,
        relay,  # type: ignore[arg-type]
        MailAddresses(lambda customer: "alice@dev.bfc.test"),
        clock=clock,
    )


def _environment(*, local: bool) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, is_local=local)
    return env


def _paused(env: ActivityEnvironment, activities: NotifyActivities, n: int) -> None:
    with pytest.raises(ApplicationError) as paused:
        env.run(activities.email_customer, _event(n))
    assert paused.value.type == INLINE_MAIL_PAUSED
    assert paused.value.non_retryable


def test_after_an_inline_failure_the_next_inline_mails_give_up_without_trying(
    activities: NotifyActivities, relay: Relay, clock: Clock
) -> None:
    inline = _environment(local=True)
    with pytest.raises(ConnectionRefusedError):
        inline.run(activities.email_customer, _event(1))
    _paused(inline, activities, 2)
    clock.now += INLINE_PAUSE_SECONDS - 1
    _paused(inline, activities, 3)
    assert relay.attempts == ["evt_1.customer"]  # the relay was asked once

    # The durable delivery (a regular activity) still tries, and sends once the relay is back.
    relay.down = False
    assert _environment(local=False).run(activities.email_customer, _event(2)).status == "sent"
    assert inline.run(activities.email_customer, _event(3)).status == "sent"
    assert relay.attempts == ["evt_1.customer", "evt_2.customer", "evt_3.customer"]
    # Inline attempts wait on the relay briefly; the durable delivery, the full timeout.
    inline_wait, durable_wait = INLINE_SMTP_TIMEOUT_SECONDS, SMTP_TIMEOUT_SECONDS
    assert relay.timeouts == [inline_wait, durable_wait, inline_wait]


def _paused_once_until_now(activities: NotifyActivities, clock: Clock) -> ActivityEnvironment:
    """An inline mail failed one pause ago: the next inline one may try."""
    inline = _environment(local=True)
    with pytest.raises(ConnectionRefusedError):
        inline.run(activities.email_customer, _event(1))
    clock.now += INLINE_PAUSE_SECONDS
    return inline


def test_after_the_pause_one_inline_mail_at_a_time_tries_until_one_gets_through(
    activities: NotifyActivities, relay: Relay, clock: Clock
) -> None:
    inline = _paused_once_until_now(activities, clock)
    # The first after the pause tries (and hangs, as a relay that does not answer would);
    # the others meanwhile give up at once instead of all waiting on it together.
    relay.down = False
    relay.hold = threading.Event()
    relay.entered.clear()
    probe: list[Any] = []
    trying = threading.Thread(
        target=lambda: probe.append(inline.run(activities.email_customer, _event(2)))
    )
    trying.start()
    assert relay.entered.wait(5)
    _paused(inline, activities, 3)
    relay.hold.set()
    trying.join(5)
    assert probe[0].status == "sent"
    # Through: every inline mail tries again.
    assert inline.run(activities.email_customer, _event(4)).status == "sent"
    assert relay.attempts == ["evt_1.customer", "evt_2.customer", "evt_4.customer"]


def test_a_failed_try_after_the_pause_pauses_again(
    activities: NotifyActivities, relay: Relay, clock: Clock
) -> None:
    inline = _paused_once_until_now(activities, clock)
    with pytest.raises(ConnectionRefusedError):
        inline.run(activities.email_customer, _event(2))
    _paused(inline, activities, 3)
    assert relay.attempts == ["evt_1.customer", "evt_2.customer"]


def test_a_failing_durable_delivery_does_not_pause_the_inline_mails(
    activities: NotifyActivities, relay: Relay
) -> None:
    with pytest.raises(ConnectionRefusedError):
        _environment(local=False).run(activities.email_customer, _event(1))
    relay.down = False
    assert _environment(local=True).run(activities.email_customer, _event(2)).status == "sent"


def test_the_notifier_gives_up_on_a_relay_that_never_greets_within_its_timeout() -> None:
    # A relay that accepts the connection and never answers: the real smtplib client.
    with socket.create_server(("127.0.0.1", 0)) as hung:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=hung.getsockname()[1])
        started = time.monotonic()
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            Notifier(settings).send(
                to=["a@dev.bfc.test"], subject="s", body="b", message_id="m", timeout=0.5
            )
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("outcome", ["no_address", "already_sent"])
def test_a_try_that_never_reaches_the_relay_does_not_open_the_gate(
    relay: Relay, clock: Clock, outcome: str
) -> None:
    # A mail with no address, or one sent before, proves nothing about the relay: were the
    # gate opened by it, every payment would wait on a relay still down.
    marks = SentMarks()
    unused: Any = None
    activities = NotifyActivities(
        marks,  # type: ignore[arg-type]
        unused,
        unused,
        relay,  # type: ignore[arg-type]
        MailAddresses(lambda customer: None if customer == "cus_none" else "a@dev.bfc.test"),
        clock=clock,
    )
    inline = _paused_once_until_now(activities, clock)
    untried = _event(2)
    if outcome == "no_address":
        untried = dataclasses.replace(untried, customer_id="cus_none")
    else:
        marks.sent.add(untried.id)
    assert inline.run(activities.email_customer, untried).status == outcome

    # Still one at a time: the next mail tries (it is not left paused for good either),
    # and while it waits on the relay the others give up at once.
    relay.hold = threading.Event()
    relay.entered.clear()
    failed: list[BaseException] = []

    def probe() -> None:
        try:
            inline.run(activities.email_customer, _event(3))
        except ConnectionRefusedError as exc:
            failed.append(exc)

    trying = threading.Thread(target=probe)
    trying.start()
    try:
        assert relay.entered.wait(5)
        _paused(inline, activities, 4)
    finally:
        relay.hold.set()
        trying.join(5)
    assert len(failed) == 1
    assert relay.attempts == ["evt_1.customer", "evt_3.customer"]
