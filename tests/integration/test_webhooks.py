"""Webhooks on the real stack: endpoints registered through the API with app tokens, events
delivered by the real activities on Temporal to a real HTTP receiver that checks the
signature with the secret from Vault, and the customer's mail in the SMTP sink."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from keycloak import KeycloakAdmin
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.notify import NotifyActivities
from api.main import create_app
from infra.audit import list_audit_events
from infra.envelope import EnvelopeCipher
from infra.event_log import EventLog
from infra.identity import IdentityDirectory, MailAddresses
from infra.keycloak import client_credentials_login
from infra.notifier import Notifier
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.vault import SecretStore, connect_vault
from infra.webhook_store import MAX_ENDPOINTS_PER_CLIENT, WebhookStore
from infra.webhooks import (
    InvalidSignature,
    WebhookSender,
    create_webhook_client,
    event_body,
    new_signing_secret,
    verify,
)
from models.notifications import (
    ENDPOINT_DISABLED,
    DeliverySummary,
    PlatformEvent,
    WebhookDelivery,
    event_id,
    payment_data,
)
from models.tables import AuditEvent
from tests.helpers.logins import Logins
from workflows.notification import EventDeliveryWorkflow

pytestmark = pytest.mark.stack

AUDIENCE_MAPPER = {
    "name": "bfc-api-audience",
    "protocol": "openid-connect",
    "protocolMapper": "oidc-audience-mapper",
    "config": {"included.client.audience": "bfc-api", "access.token.claim": "true"},
}


# -- a receiver: an app's HTTP server on a free loopback port ------------------------------
@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    answers: list[int] = field(default_factory=list)  # status codes to answer, in turn; then 200
    requests: list[Received] = field(default_factory=list)
    body: bytes = b""  # what every answer carries

    def answer(self) -> int:
        return self.answers.pop(0) if self.answers else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(Received(headers=dict(self.headers), body=body))
            status = state.answer()
            self.send_response(status)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# -- apps: the realm's bfc-app, and a second app made for this module ------------------------
@pytest.fixture(scope="module")
def secrets(settings: Settings) -> SecretStore:
    return SecretStore(connect_vault(settings), settings)


@pytest.fixture(scope="module")
def signing_secret(secrets: SecretStore) -> str:
    return secrets.read("webhooks")["signing_secret"]


@pytest.fixture(scope="module")
def app_headers(settings: Settings, secrets: SecretStore) -> dict[str, str]:
    creds = secrets.read("keycloak")
    token = client_credentials_login(settings, creds["client_id"], creds["client_secret"])
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class App:
    client_id: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def other_app(settings: Settings) -> Iterator[App]:
    """A second app client (client credentials, role app), removed afterwards."""
    admin = KeycloakAdmin(
        server_url=settings.keycloak_url,
        username="admin",
        password="dev-admin",
        realm_name=settings.keycloak_realm,
        user_realm_name="master",
    )
    client_id = f"bfc-test-app-{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    internal_id = admin.create_client(
        {
            "clientId": client_id,
            "publicClient": False,
            "secret": secret,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "protocolMappers": [AUDIENCE_MAPPER],
        }
    )
    try:
        service_user = admin.get_client_service_account_user(internal_id)
        admin.assign_realm_roles(service_user["id"], [admin.get_realm_role("app")])
        token = client_credentials_login(settings, client_id, secret)
        yield App(client_id=client_id, headers={"Authorization": f"Bearer {token}"})
    finally:
        admin.delete_client(internal_id)


@pytest.fixture(scope="module")
def directory(settings: Settings, secrets: SecretStore) -> IdentityDirectory:
    creds = secrets.read("keycloak")
    return IdentityDirectory.connect(
        settings, client_id=creds["client_id"], client_secret=creds["client_secret"]
    )


@pytest.fixture
async def endpoints(api: httpx.AsyncClient) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
    """Endpoints a test registered, deleted afterwards: a forgotten one would receive (and
    retry for days) every later event of its app."""
    made: list[tuple[str, dict[str, str]]] = []
    yield made
    for endpoint_id, headers in made:
        await api.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=headers)


async def register(
    api: httpx.AsyncClient,
    made: list[tuple[str, dict[str, str]]],
    headers: dict[str, str],
    url: str,
    event_types: list[str],
) -> dict[str, Any]:
    response = await api.post(
        "/v1/webhook-endpoints", json={"url": url, "event_types": event_types}, headers=headers
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    made.append((endpoint["id"], headers))
    return endpoint


# -- the delivery workflow with the real activities, on a queue of its own -----------------
@pytest.fixture
def events(pool: AsyncConnectionPool[Any]) -> EventLog:
    return EventLog(pool)


@pytest.fixture
async def notify_queue(
    temporal: Client,
    settings: Settings,
    engine: Engine,
    events: EventLog,
    signing_secret: str,
    directory: IdentityDirectory,
    cipher: EnvelopeCipher,
) -> AsyncIterator[tuple[str, NotifyActivities]]:
    http = create_webhook_client(settings)
    activities = NotifyActivities(
        WebhookStore(engine, cipher),
        events,
        WebhookSender(http, signing_secret),
        Notifier(settings),
        MailAddresses(directory.mail_address),
    )
    queue = f"notify-test-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=4) as pool:
        async with Worker(
            temporal,
            task_queue=queue,
            workflows=[EventDeliveryWorkflow],
            activities=[
                activities.record_event,
                activities.deliver_webhook,
                activities.email_customer,
            ],
            activity_executor=pool,
        ):
            yield queue, activities
    await http.aclose()


def an_event(client_id: str, customer_id: str | None, unique: str) -> PlatformEvent:
    payment_id = f"pay_test{unique}"
    return PlatformEvent(
        id=event_id(payment_id, "payment.succeeded"),
        type="payment.succeeded",
        created_at="2026-11-26T12:00:00.250000+00:00",
        client_id=client_id,
        customer_id=customer_id,
        data=payment_data(
            payment_id=payment_id, kind="topup", amount=1050, currency="EUR", status="succeeded"
        ),
    )


async def deliver(temporal: Client, queue: str, event: PlatformEvent) -> DeliverySummary:
    handle = await temporal.start_workflow(
        EventDeliveryWorkflow.run, event, id=event.id, task_queue=queue
    )
    try:
        return await asyncio.wait_for(handle.result(), timeout=60)
    except TimeoutError:
        # Not left running on the shared server after this test's worker is gone.
        await handle.terminate("the test gave up waiting")
        raise


def assert_signed(request: Received, secret: str, event: PlatformEvent) -> None:
    verify(secret, request.headers.get("BFC-Signature"), request.body, now=time.time())
    assert request.headers["BFC-Event-Id"] == event.id
    assert request.headers["BFC-Event-Type"] == event.type
    document = json.loads(request.body)
    assert document == {
        "id": event.id,
        "type": event.type,
        "created_at": event.created_at,
        "data": event.data,
    }


# -- tests ------------------------------------------------------------------------------------
async def test_an_event_reaches_the_receiver_signed_and_the_customer_by_mail(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    other_app: App,
    receiver: Receiver,
    notify_queue: tuple[str, NotifyActivities],
    temporal: Client,
    engine: Engine,
    stack: Stack,
    directory: IdentityDirectory,
    signing_secret: str,
    unique: str,
    cipher: EnvelopeCipher,
) -> None:
    queue, activities = notify_queue
    endpoint = await register(
        api, endpoints, other_app.headers, receiver.url, ["payment.succeeded", "payment.failed"]
    )
    # Subscribed to other types only: this one hears nothing.
    await register(api, endpoints, other_app.headers, receiver.url + "/other", ["payment.failed"])
    alice = directory.find(username="alice")
    assert alice is not None
    event = an_event(other_app.client_id, alice.id, unique)

    summary = await deliver(temporal, queue, event)

    assert [(w.endpoint_id, w.status, w.attempt) for w in summary.webhooks] == [
        (endpoint["id"], "delivered", 1)
    ]
    (request,) = receiver.requests
    # Signed with the endpoint's own secret, which no other key verifies.
    assert_signed(request, endpoint["secret"], event)
    with pytest.raises(InvalidSignature):
        verify(signing_secret, request.headers["BFC-Signature"], request.body, now=time.time())
    attempts = WebhookStore(engine, cipher).list_attempts(event.id)
    assert [(a.endpoint_id, a.attempt, a.status_code) for a in attempts] == [
        (endpoint["id"], 1, 200)
    ]

    assert summary.email is not None and summary.email.status == "sent"
    mails = [m.read_text() for m in stack.smtp.mailbox.glob("*.eml") if event.id in m.read_text()]
    assert len(mails) == 1
    assert "To: alice@dev.bfc.test" in mails[0]
    assert "10.50 EUR succeeded" in mails[0]

    # Retried after they had done their work (a lost result): nothing goes out twice.
    env = ActivityEnvironment()
    assert env.run(activities.email_customer, event).status == "already_sent"
    again = [m for m in stack.smtp.mailbox.glob("*.eml") if event.id in m.read_text()]
    assert len(again) == 1
    assert (await env.run(activities.record_event, event)).endpoint_ids == [endpoint["id"]]


async def test_a_receiver_answering_500_gets_a_second_attempt_with_the_same_event(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    other_app: App,
    receiver: Receiver,
    notify_queue: tuple[str, NotifyActivities],
    temporal: Client,
    engine: Engine,
    signing_secret: str,
    unique: str,
    cipher: EnvelopeCipher,
) -> None:
    queue, _ = notify_queue
    endpoint = await register(
        api, endpoints, other_app.headers, receiver.url, ["payment.succeeded"]
    )
    receiver.answers = [500]
    event = an_event(other_app.client_id, None, unique)

    summary = await deliver(temporal, queue, event)  # the retry comes after 5 s of backoff

    assert [(w.status, w.attempt) for w in summary.webhooks] == [("delivered", 2)]
    first, second = receiver.requests
    assert first.body == second.body
    for request in (first, second):
        assert_signed(request, endpoint["secret"], event)
    attempts = WebhookStore(engine, cipher).list_attempts(event.id)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 200)]
    assert "500" in (attempts[0].error or "")
    assert summary.email is None  # no customer on this event


async def test_a_receiver_answering_410_is_disabled_and_hears_no_more_until_enabled(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    other_app: App,
    app_headers: dict[str, str],
    receiver: Receiver,
    notify_queue: tuple[str, NotifyActivities],
    temporal: Client,
    engine: Engine,
    unique: str,
) -> None:
    queue, activities = notify_queue
    endpoint = await register(
        api, endpoints, other_app.headers, receiver.url, ["payment.succeeded"]
    )
    receiver.answers = [410]
    event = an_event(other_app.client_id, None, unique)

    summary = await deliver(temporal, queue, event)

    assert [w.status for w in summary.webhooks] == ["endpoint_gone"]
    assert len(receiver.requests) == 1
    listed = (await api.get("/v1/webhook-endpoints", headers=other_app.headers)).json()["data"]
    assert {e["id"]: e["enabled"] for e in listed}[endpoint["id"]] is False
    later = an_event(other_app.client_id, None, unique + "-later")
    assert (await deliver(temporal, queue, later)).webhooks == []
    # A retry already scheduled for it stops at once, without sending.
    with pytest.raises(ApplicationError) as stopped:
        await ActivityEnvironment().run(
            activities.deliver_webhook, WebhookDelivery(event.id, endpoint["id"])
        )
    assert (stopped.value.type, stopped.value.non_retryable) == (ENDPOINT_DISABLED, True)
    assert len(receiver.requests) == 1

    # The app mends its receiver and enables the endpoint again: the next event arrives.
    path = f"/v1/webhook-endpoints/{endpoint['id']}/enable"
    assert (await api.post(path, headers=app_headers)).status_code == 404  # not its endpoint
    enabled = await api.post(path, headers=other_app.headers)
    assert (enabled.status_code, enabled.json()["enabled"]) == (200, True), enabled.text
    again = await api.post(path, headers=other_app.headers)  # enabling twice changes nothing
    assert (again.status_code, again.json()["enabled"]) == (200, True)
    receiver.answers = [200]
    mended = an_event(other_app.client_id, None, unique + "-mended")
    summary = await deliver(temporal, queue, mended)
    assert [w.status for w in summary.webhooks] == ["delivered"]
    assert [r.headers["BFC-Event-Id"] for r in receiver.requests[1:]] == [mended.id]
    with Session(engine) as session:
        trail = [e.action for e in list_audit_events(session, subject=endpoint["id"])]
    assert trail.count("webhooks.endpoint_enabled") == 1

    # What it missed meanwhile it reads back, bodies as the webhooks carry them: the event
    # its receiver refused with the 410 and the one sent while the endpoint was disabled.
    missed = await api.get(
        "/v1/events", params={"delivery_success": "false"}, headers=other_app.headers
    )
    assert missed.status_code == 200, missed.text
    missed_ids = {e["id"] for e in missed.json()["data"]}
    assert {event.id, later.id} <= missed_ids
    assert mended.id not in missed_ids
    accepted = await api.get(
        "/v1/events", params={"delivery_success": "true"}, headers=other_app.headers
    )
    assert mended.id in {e["id"] for e in accepted.json()["data"]}
    assert {event.id, later.id}.isdisjoint(e["id"] for e in accepted.json()["data"])


async def test_an_answer_postgres_text_cannot_hold_is_still_recorded(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    other_app: App,
    receiver: Receiver,
    notify_queue: tuple[str, NotifyActivities],
    events: EventLog,
    engine: Engine,
    cipher: EnvelopeCipher,
    unique: str,
) -> None:
    # A NUL byte in the receiver's answer made the attempt's row fail to insert: the
    # attempt went unrecorded, and the activity failed on our side, not the receiver's.
    _, activities = notify_queue
    endpoint = await register(
        api, endpoints, other_app.headers, receiver.url, ["payment.succeeded"]
    )
    receiver.answers, receiver.body = [500], b"gone\x00 \xff"
    event = an_event(other_app.client_id, None, unique)
    assert endpoint["id"] in await events.record(event)

    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(
            activities.deliver_webhook, WebhookDelivery(event.id, endpoint["id"])
        )
    assert (failed.value.type, failed.value.non_retryable) == ("WebhookFailed", False)
    store = WebhookStore(engine, cipher)
    # Whatever error text the store is handed, too (a lone surrogate has no UTF-8 form).
    store.record_attempt(
        event_id=event.id,
        endpoint_id=endpoint["id"],
        attempt=2,
        status_code=None,
        error="nul\x00 surrogate\ud800",
    )
    attempts = store.list_attempts(event.id)
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, 500, "the endpoint answered 500: gone\ufffd \ufffd"),
        (2, None, "nul\ufffd surrogate?"),
    ]


async def test_a_stored_url_the_sender_cannot_parse_is_one_recorded_failure(
    endpoints: list[tuple[str, dict[str, str]]],
    other_app: App,
    notify_queue: tuple[str, NotifyActivities],
    events: EventLog,
    engine: Engine,
    cipher: EnvelopeCipher,
    unique: str,
) -> None:
    # Registered before registration refused such URLs: the sender raised outside its
    # handling, so no attempt was recorded and the activity was retried for days.
    _, activities = notify_queue
    store = WebhookStore(engine, cipher)
    endpoint = store.add_endpoint(
        client_id=other_app.client_id,
        url="https://0177.0.0.1/hooks",
        event_types=["payment.succeeded"],
        created_by="test",
        signing_secret=new_signing_secret(),
    )
    endpoints.append((endpoint.id, other_app.headers))
    event = an_event(other_app.client_id, None, unique)
    assert endpoint.id in await events.record(event)

    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(
            activities.deliver_webhook, WebhookDelivery(event.id, endpoint.id)
        )
    assert (failed.value.type, failed.value.non_retryable) == ("WebhookFailed", True)
    (attempt,) = store.list_attempts(event.id)
    assert (attempt.attempt, attempt.status_code) == (1, None)
    assert "cannot be parsed" in (attempt.error or "")


@pytest.fixture
async def production_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process as production configures webhooks: https, public addresses."""
    production = settings.model_copy(
        update={"webhooks_allow_http": False, "webhooks_allow_private_addresses": False}
    )
    app = create_app(production)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.mark.parametrize("url", ["https://0177.0.0.1/hooks", "https://xn--/hooks"])
async def test_a_url_the_sender_cannot_parse_is_refused_in_either_configuration(
    api: httpx.AsyncClient,
    production_api: httpx.AsyncClient,
    app_headers: dict[str, str],
    url: str,
) -> None:
    # In production configuration the address check raised on it (a 500); in the dev
    # configuration it was registered, to fail every delivery.
    for client in (production_api, api):
        response = await client.post(
            "/v1/webhook-endpoints",
            json={"url": url, "event_types": ["payment.failed"]},
            headers=app_headers,
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "invalid_url"
        assert [(e["field"], e["code"]) for e in problem["errors"]] == [("url", "invalid_url")]


def a_dated_event(client_id: str, unique: str, n: int, event_type: str) -> PlatformEvent:
    # Dated after every other event of this module, so ``created[gte]`` picks out the test's.
    payment_id = f"pay_read{unique}{n}"
    return PlatformEvent(
        id=event_id(payment_id, event_type),
        type=event_type,
        created_at=f"2030-01-01T00:00:0{n}.125000+00:00",
        client_id=client_id,
        customer_id=None,
        data=payment_data(
            payment_id=payment_id, kind="transfer", amount=n, currency="EUR", status="succeeded"
        ),
    )


async def test_an_app_reads_back_its_own_events_newest_first(
    api: httpx.AsyncClient,
    events: EventLog,
    other_app: App,
    app_headers: dict[str, str],
    secrets: SecretStore,
    unique: str,
) -> None:
    first, second, third = (
        a_dated_event(other_app.client_id, unique, n, event_type)
        for n, event_type in (
            (1, "payment.succeeded"),
            (2, "payment.declined"),
            (3, "payment.succeeded"),
        )
    )
    # The realm's app outlives this test: its event is dated in the past, out of its way.
    theirs = dataclasses.replace(
        a_dated_event(secrets.read("keycloak")["client_id"], unique, 4, "payment.succeeded"),
        created_at="2020-01-01T00:00:00+00:00",
    )
    for event in (second, first, theirs, third):
        await events.record(event)
    since = {"created[gte]": "2030-01-01T00:00:00Z"}

    async def listed(headers: dict[str, str], **params: str | int) -> dict[str, Any]:
        response = await api.get("/v1/events", params={**since, **params}, headers=headers)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    page = await listed(other_app.headers, limit=2)
    assert [e["id"] for e in page["data"]] == [third.id, second.id]
    assert page["next_cursor"] == second.id
    page = await listed(other_app.headers, limit=2, cursor=page["next_cursor"])
    assert ([e["id"] for e in page["data"]], page["next_cursor"]) == ([first.id], None)
    page = await listed(other_app.headers, type="payment.succeeded")
    assert [e["id"] for e in page["data"]] == [third.id, first.id]

    # One event reads as the exact document its webhook carried.
    one = await api.get(f"/v1/events/{first.id}", headers=other_app.headers)
    assert one.status_code == 200, one.text
    assert one.json() == json.loads(
        event_body(
            event_id=first.id,
            event_type=first.type,
            created_at=first.created_at,
            data=first.data,
        )
    )
    mine = await api.get(f"/v1/events/{theirs.id}", headers=app_headers)
    assert (mine.status_code, mine.json()["created_at"]) == (200, theirs.created_at)
    # Another app's event is as missing as one that does not exist.
    for headers, missing in ((app_headers, first.id), (other_app.headers, theirs.id)):
        refused = await api.get(f"/v1/events/{missing}", headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (404, "event_not_found")


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"type": "payment.teleported"}, "type", "unknown_event_type"),
        ({"created[gte]": "yesterday"}, "created[gte]", "validation_failed"),
        ({"created[gte]": "2030-01-01T00:00:00"}, "created[gte]", "timezone_required"),
        ({"cursor": "pay_nothing"}, "cursor", "validation_failed"),
        ({"limit": "0"}, "limit", "validation_failed"),
    ],
)
async def test_a_bad_event_filter_is_a_problem_naming_it(
    api: httpx.AsyncClient, other_app: App, params: dict[str, str], field: str, code: str
) -> None:
    response = await api.get("/v1/events", params=params, headers=other_app.headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == code
    assert [e["field"] for e in problem["errors"]] == [field]


async def test_an_app_registers_lists_and_deletes_its_endpoints(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    app_headers: dict[str, str],
    signing_secret: str,
) -> None:
    response = await api.post(
        "/v1/webhook-endpoints",
        json={"url": "https://app.example/hooks", "event_types": ["payment.refunded"] * 2},
        headers=app_headers,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    endpoints.append((created["id"], app_headers))
    assert set(created) == {
        "id",
        "url",
        "event_types",
        "enabled",
        "created_at",
        "previous_secret_expires_at",  # None: no rollover under way
        "secret",
    }
    assert created["id"].startswith("we_")
    assert created["event_types"] == ["payment.refunded"]
    assert created["enabled"] is True
    # Its own secret, shown this once; never the platform's.
    secret = created.pop("secret")
    assert secret.startswith("whsec_") and len(secret) > 40
    assert signing_secret not in response.text

    listed = (await api.get("/v1/webhook-endpoints", headers=app_headers)).json()["data"]
    assert created in listed
    assert secret not in str(listed)

    gone = await api.delete(f"/v1/webhook-endpoints/{created['id']}", headers=app_headers)
    assert gone.status_code == 204
    listed = (await api.get("/v1/webhook-endpoints", headers=app_headers)).json()["data"]
    assert created["id"] not in {e["id"] for e in listed}
    again = await api.delete(f"/v1/webhook-endpoints/{created['id']}", headers=app_headers)
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("body", "code", "fields"),
    [
        ({"url": "ftp://app.example/x", "event_types": ["payment.failed"]}, "invalid_url", ["url"]),
        ({"url": "https://u:p@app.example/", "event_types": ["payment.failed"]}, "invalid_url",
         ["url"]),
        ({"url": "https://app.example/", "event_types": ["payment.failed", "payment.teleported"]},
         "unknown_event_type", ["event_types.1"]),
        ({"url": "nowhere", "event_types": ["nothing"]}, "validation_failed",
         ["url", "event_types.0"]),
        ({"url": "https://app.example/", "event_types": []}, "validation_failed",
         ["event_types"]),
        ({"event_types": ["payment.failed"]}, "validation_failed", ["url"]),
    ],
)  # fmt: skip
async def test_invalid_endpoints_are_problems_naming_the_field(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    body: dict[str, Any],
    code: str,
    fields: list[str],
) -> None:
    before = (await api.get("/v1/webhook-endpoints", headers=app_headers)).json()["data"]
    response = await api.post("/v1/webhook-endpoints", json=body, headers=app_headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert [e["field"] for e in problem["errors"]] == fields
    after = (await api.get("/v1/webhook-endpoints", headers=app_headers)).json()["data"]
    assert after == before  # nothing was registered


async def test_customers_may_not_manage_endpoints(api: httpx.AsyncClient, logins: Logins) -> None:
    body = {"url": "https://alice.example/hooks", "event_types": ["payment.succeeded"]}
    for method, path, json_body in [
        ("POST", "/v1/webhook-endpoints", body),
        ("GET", "/v1/webhook-endpoints", None),
        ("DELETE", "/v1/webhook-endpoints/we_nothing", None),
    ]:
        response = await api.request(method, path, json=json_body, headers=logins.headers("alice"))
        assert response.status_code == 403, (method, response.text)
        assert response.json()["code"] == "forbidden"


async def test_another_app_cannot_see_or_delete_your_endpoint(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    app_headers: dict[str, str],
    other_app: App,
) -> None:
    mine = await register(
        api, endpoints, app_headers, "https://app.example/mine", ["payment.succeeded"]
    )

    theirs = (await api.get("/v1/webhook-endpoints", headers=other_app.headers)).json()["data"]
    assert mine["id"] not in {e["id"] for e in theirs}
    refused = await api.delete(f"/v1/webhook-endpoints/{mine['id']}", headers=other_app.headers)
    assert refused.status_code == 404
    assert refused.json()["code"] == "webhook_endpoint_not_found"

    still = (await api.get("/v1/webhook-endpoints", headers=app_headers)).json()["data"]
    assert mine["id"] in {e["id"] for e in still}


async def test_each_endpoint_has_its_own_secret_kept_only_encrypted(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    app_headers: dict[str, str],
    other_app: App,
    engine: Engine,
    cipher: EnvelopeCipher,
) -> None:
    # With one platform-wide secret, any app that verifies its webhooks could sign for any
    # other app. Two apps' endpoints (and two endpoints of one app) get different secrets.
    mine = await register(api, endpoints, app_headers, "https://a.example/h", ["payment.failed"])
    again = await register(api, endpoints, app_headers, "https://a.example/h", ["payment.failed"])
    theirs = await register(
        api, endpoints, other_app.headers, "https://b.example/h", ["payment.failed"]
    )
    assert len({mine["secret"], again["secret"], theirs["secret"]}) == 3

    store = WebhookStore(engine, cipher)
    stored = store.get_endpoint(theirs["id"])
    assert stored is not None and stored.signing_secret is not None
    assert theirs["secret"] not in stored.signing_secret  # an envelope, not the secret
    assert store.signing_secret(stored) == theirs["secret"]
    with Session(engine) as session:
        trail = session.exec(select(AuditEvent).where(AuditEvent.subject == theirs["id"])).all()
    assert trail and all(theirs["secret"] not in str(event.details) for event in trail)


async def test_a_rolled_secret_signs_next_to_the_previous_one_until_it_expires(
    api: httpx.AsyncClient,
    endpoints: list[tuple[str, dict[str, str]]],
    app_headers: dict[str, str],
    other_app: App,
    receiver: Receiver,
    notify_queue: tuple[str, NotifyActivities],
    temporal: Client,
    engine: Engine,
    unique: str,
) -> None:
    queue, _ = notify_queue
    endpoint = await register(
        api, endpoints, other_app.headers, receiver.url, ["payment.succeeded"]
    )
    roll = f"/v1/webhook-endpoints/{endpoint['id']}/roll-secret"
    first = endpoint["secret"]
    assert endpoint["previous_secret_expires_at"] is None

    rolled = await api.post(
        roll, json={"expire_previous_after_seconds": 3600}, headers=other_app.headers
    )
    assert rolled.status_code == 200, rolled.text
    second, expires = rolled.json()["secret"], rolled.json()["previous_secret_expires_at"]
    assert second.startswith("whsec_") and second != first
    assert 3500 < (datetime.fromisoformat(expires) - datetime.now(UTC)).total_seconds() <= 3600
    # Rolled again (its answer lost, say): the secret from before the rollover stays, with
    # its expiry; only the new one is replaced.
    again = await api.post(
        roll, json={"expire_previous_after_seconds": 60}, headers=other_app.headers
    )
    third = again.json()["secret"]
    assert third not in {first, second}
    assert again.json()["previous_secret_expires_at"] == expires

    event = an_event(other_app.client_id, None, unique)
    await deliver(temporal, queue, event)
    (request,) = receiver.requests
    assert_signed(request, third, event)
    assert_signed(request, first, event)  # receivers not moved over yet still accept it
    with pytest.raises(InvalidSignature):
        verify(second, request.headers["BFC-Signature"], request.body, now=time.time())

    # Leaked: rolled with no overlap, only the newest secret signs from now on.
    ended = await api.post(
        roll, json={"expire_previous_after_seconds": 0}, headers=other_app.headers
    )
    fourth = ended.json()["secret"]
    assert ended.json()["previous_secret_expires_at"] is None
    later = an_event(other_app.client_id, None, unique + "later")
    await deliver(temporal, queue, later)
    header = receiver.requests[1].headers["BFC-Signature"]
    assert header.count("v1=") == 1
    assert_signed(receiver.requests[1], fourth, later)
    for old in (first, third):
        with pytest.raises(InvalidSignature):
            verify(old, header, receiver.requests[1].body, now=time.time())

    # Only the owner rolls, and the body is checked.
    theirs = await api.post(roll, headers=app_headers)
    assert (theirs.status_code, theirs.json()["code"]) == (404, "webhook_endpoint_not_found")
    bad = await api.post(
        roll, json={"expire_previous_after_seconds": -1}, headers=other_app.headers
    )
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["expire_previous_after_seconds"]
    with Session(engine) as session:
        trail = session.exec(
            select(AuditEvent).where(
                AuditEvent.subject == endpoint["id"], AuditEvent.action == "webhooks.secret_rolled"
            )
        ).all()
    assert len(trail) == 3
    assert all(s not in str(e.details) for e in trail for s in (first, second, third, fourth))


async def test_an_app_registers_at_most_sixteen_endpoints(
    api: httpx.AsyncClient, endpoints: list[tuple[str, dict[str, str]]], other_app: App
) -> None:
    """Each event fans out to every endpoint of its app in one workflow."""
    listed = (await api.get("/v1/webhook-endpoints", headers=other_app.headers)).json()["data"]
    for n in range(MAX_ENDPOINTS_PER_CLIENT - len(listed)):
        await register(
            api, endpoints, other_app.headers, f"https://app.example/hooks/{n}", ["payment.failed"]
        )
    refused = await api.post(
        "/v1/webhook-endpoints",
        json={"url": "https://app.example/hooks/one-more", "event_types": ["payment.failed"]},
        headers=other_app.headers,
    )
    assert (refused.status_code, refused.json()["code"]) == (422, "endpoint_limit_reached")
    # Deleting one makes room again.
    endpoint_id, headers = endpoints.pop()
    assert (await api.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=headers)).is_success
    await register(
        api, endpoints, other_app.headers, "https://app.example/hooks/x", ["payment.failed"]
    )
