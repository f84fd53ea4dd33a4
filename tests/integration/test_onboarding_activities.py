"""Onboarding's storage and activities against the real stack: PostgreSQL (sealed personal
data), Keycloak (users, the set-password mail), the KYC provider sandbox, the sanctions
fixture list, the ledger and the SMTP sink."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session
from temporalio.testing import ActivityEnvironment

from activities.onboarding import OnboardingActivities
from infra.audit import list_audit_events
from infra.envelope import EnvelopeCipher
from infra.identity import IdentityDirectory
from infra.kyc import KycProvider
from infra.ledger_store import LedgerStore
from infra.notifier import Notifier
from infra.onboarding_store import (
    ApplicationClosed,
    IdempotencyKeyReused,
    OnboardingStore,
    StoredApplication,
)
from infra.sanctions import SanctionsList, Screener
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.vault import SecretStore, connect_vault
from models.contracts import Address, PersonalData
from models.ids import new_id
from models.ledger import AccountKind
from models.onboarding import (
    ActivateInput,
    ApplicantNotice,
    ApplicantRef,
    OnboardingRecord,
    ScreeningSummary,
)
from models.payment import wallet_account_id
from tests.helpers.mailbox import body_of, mails_to

pytestmark = pytest.mark.stack


def person(
    unique: str,
    *,
    given: str = "Maria",
    family: str = "Lindqvist",
    born: str = "1987-04-12",
    document: str | None = None,
) -> PersonalData:
    return PersonalData(
        given_name=given,
        family_name=family,
        date_of_birth=born,
        email=f"applicant.{unique}@dev.bfc.test",
        phone="+46701234567",
        address=Address(line1="Storgatan 1", city="Uppsala", postal_code="75320", country="SE"),
        document_type="passport" if document else "",
        document_number=document or "",
    )


def fingerprint(data: PersonalData) -> str:
    return hashlib.sha256(repr(dataclasses.asdict(data)).encode()).hexdigest()


@pytest.fixture
def store(engine: Engine, cipher: EnvelopeCipher) -> OnboardingStore:
    return OnboardingStore(engine, cipher)


def apply(store: OnboardingStore, data: PersonalData, *, key: str) -> StoredApplication:
    application, _ = store.apply(
        onboarding_id=new_id("onb"),
        customer_id=new_id("cus"),
        client_id="bfc-app",
        scope="test-app",
        key=key,
        request_hash=fingerprint(data),
        data=data,
        country="SE",
        currency="EUR",
        documents_provided=bool(data.document_number),
    )
    return application


@pytest.fixture(scope="module")
def directory(settings: Settings) -> IdentityDirectory:
    creds = SecretStore(connect_vault(settings), settings).read("keycloak")
    return IdentityDirectory.connect(
        settings, client_id=creds["client_id"], client_secret=creds["client_secret"]
    )


@pytest.fixture(scope="module")
def screener(settings: Settings) -> Screener:
    return Screener(SanctionsList.load(settings.sanctions_list_path))


@pytest.fixture
def created_users(directory: IdentityDirectory) -> Iterator[list[str]]:
    """Ids of Keycloak users a test made; deleted at teardown."""
    ids: list[str] = []
    yield ids
    for user_id in ids:
        directory.delete_user(user_id)


@pytest.fixture
async def activities(
    settings: Settings,
    store: OnboardingStore,
    directory: IdentityDirectory,
    screener: Screener,
    ledger: LedgerStore,
) -> AsyncIterator[OnboardingActivities]:
    api_key = SecretStore(connect_vault(settings), settings).read("kyc")["api_key"]
    async with KycProvider.from_settings(settings, api_key=api_key) as kyc:
        yield OnboardingActivities(
            store,
            directory,
            kyc,
            screener,
            ledger,
            Notifier(settings),
            callback_url=f"{settings.api_url}/v1/kyc/callbacks",
        )


# -- the store --------------------------------------------------------------------------------
def test_an_application_is_stored_once_per_key_with_sealed_personal_data(
    store: OnboardingStore, engine: Engine, unique: str
) -> None:
    data = person(unique, family=f"Lindqvist-{unique}")
    first = apply(store, data, key=f"key-{unique}")
    again, created = store.apply(
        onboarding_id=new_id("onb"),
        customer_id=new_id("cus"),
        client_id="bfc-app",
        scope="test-app",
        key=f"key-{unique}",
        request_hash=fingerprint(data),
        data=data,
        country="SE",
        currency="EUR",
        documents_provided=False,
    )
    assert created is False
    assert (again.id, again.customer_id) == (first.id, first.customer_id)
    assert first.status == "received"
    assert first.missing == ["document"]

    other = dataclasses.replace(data, phone="+46709999999")
    with pytest.raises(IdempotencyKeyReused):
        store.apply(
            onboarding_id=new_id("onb"),
            customer_id=new_id("cus"),
            client_id="bfc-app",
            scope="test-app",
            key=f"key-{unique}",
            request_hash=fingerprint(other),
            data=other,
            country="SE",
            currency="EUR",
            documents_provided=False,
        )

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.pii, c.status FROM customers c JOIN onboarding_applications a "
                "ON a.customer_id = c.id WHERE a.id = :id"
            ),
            {"id": first.id},
        ).all()
        # The retries left nothing behind: one customer, one application for the key.
        keyed = conn.execute(
            text("SELECT count(*) FROM onboarding_requests WHERE idempotency_key = :k"),
            {"k": f"key-{unique}"},
        ).scalar_one()
    assert len(rows) == 1 and keyed == 1
    pii, status = rows[0]
    assert unique.encode() not in bytes(pii)
    assert b"Lindqvist" not in bytes(pii) and b"applicant." not in bytes(pii)
    assert status == "applicant"
    assert store.personal_data(first.customer_id) == data

    # The document arrives later: sealed with the rest, no longer missing.
    store.add_document(first.id, "passport", f"CLEAR{unique}")
    assert store.personal_data(first.customer_id).document_number == f"CLEAR{unique}"
    stored = store.get(first.id)
    assert stored is not None and stored.missing == []


def test_a_stored_document_is_marked_until_told_or_decided(
    store: OnboardingStore, unique: str
) -> None:
    application = apply(store, person(unique, document=None), key=f"key-{unique}")
    assert application.documents_unsignalled_since is None
    store.add_document(application.id, "passport", f"CLEAR{unique}")
    stored = store.get(application.id)
    assert stored is not None and stored.missing == []
    assert stored.documents_unsignalled_since is not None  # for the sweep, until told
    # Decided before its workflow heard of it (canceled meanwhile): nothing left to tell.
    assert store.record(
        OnboardingRecord(onboarding_id=application.id, status="canceled", decision_reason="x")
    )
    decided = store.get(application.id)
    assert decided is not None and decided.documents_unsignalled_since is None


def test_the_sagas_own_record_stamps_it_started(store: OnboardingStore, unique: str) -> None:
    """Started, with the API's stamp lost (it stopped after starting the workflow): the
    workflow's first record stamps it, so the documents sweep can still tell it of a
    document whose signal failed."""
    application = apply(store, person(unique, document=None), key=f"key-{unique}")
    assert application.saga_started_at is None
    waiting = OnboardingRecord(
        onboarding_id=application.id, status="awaiting_documents", missing=list(application.missing)
    )
    assert store.record(waiting)
    store.add_document(application.id, "passport", f"CLEAR{unique}")
    stored = store.get(application.id)
    assert stored is not None and stored.saga_started_at is not None
    unsignalled = store.documents_unsignalled(older_than=timedelta(0), limit=1000)
    assert application.id in {a.id for a in unsignalled}


def test_a_decided_application_is_never_moved(
    store: OnboardingStore, engine: Engine, unique: str
) -> None:
    application = apply(store, person(unique, document=f"CLEAR{unique}"), key=f"key-{unique}")
    screening = ScreeningSummary(
        possible_match=False, best_score=0.0, threshold=88.0, algorithm="a", list_version="v"
    )
    assert store.record(
        OnboardingRecord(onboarding_id=application.id, status="screening", screening=screening)
    )
    assert store.record(
        OnboardingRecord(onboarding_id=application.id, status="approved", risk_tier="low")
    )
    decided = store.get(application.id)
    assert decided is not None and decided.completed_at is not None
    # After the decision the saga fills in what approval made: taken, still approved.
    wallet = OnboardingRecord(
        onboarding_id=application.id, status="approved", wallet_account_id="acc_wallet_x"
    )
    assert store.record(wallet)
    late = OnboardingRecord(
        onboarding_id=application.id, status="rejected", decision_reason="late write"
    )
    assert store.record(late) is False
    stored = store.get(application.id)
    assert stored is not None
    assert (stored.status, stored.risk_tier, stored.decision_reason) == ("approved", "low", None)
    assert stored.wallet_account_id == "acc_wallet_x"
    assert stored.screening is not None and stored.screening["list_version"] == "v"
    assert stored.completed_at == decided.completed_at
    with pytest.raises(ApplicationClosed):
        store.add_document(application.id, "passport", "CLEAR-again")

    # The database holds the line too, whatever code writes to it.
    with engine.begin() as conn, pytest.raises(DBAPIError, match="cannot become"):
        conn.execute(
            text("UPDATE onboarding_applications SET status = 'rejected' WHERE id = :id"),
            {"id": application.id},
        )
    with Session(engine) as session:
        actions = [e.action for e in list_audit_events(session, subject=application.id)]
        customer_status = session.execute(
            text("SELECT status FROM customers WHERE id = :id"), {"id": application.customer_id}
        ).scalar_one()
    assert actions == [
        "onboarding.received",
        "onboarding.screening",
        "onboarding.approved",
        "onboarding.approved",
    ]
    assert customer_status == "active"


# -- the activities ---------------------------------------------------------------------------
async def test_the_applicant_user_is_created_once_disabled_with_role_customer(
    activities: OnboardingActivities,
    store: OnboardingStore,
    directory: IdentityDirectory,
    engine: Engine,
    unique: str,
    created_users: list[str],
) -> None:
    application = apply(store, person(unique, document=f"CLEAR{unique}"), key=f"key-{unique}")
    ref = ApplicantRef(onboarding_id=application.id, customer_id=application.customer_id)
    env = ActivityEnvironment()
    user_id = env.run(activities.create_applicant_user, ref)
    created_users.append(user_id)
    assert env.run(activities.create_applicant_user, ref) == user_id  # a retried activity

    user = directory.get(user_id)
    assert user.username == application.customer_id  # no name or email in the username
    assert user.enabled is False
    assert "customer" in user.realm_roles
    assert user.email == f"applicant.{unique}@dev.bfc.test"
    with Session(engine) as session:
        linked = session.execute(
            text("SELECT user_id FROM customers WHERE id = :id"), {"id": application.customer_id}
        ).scalar_one()
    assert linked == user_id


async def test_a_clear_document_comes_back_clear(
    activities: OnboardingActivities, store: OnboardingStore, unique: str
) -> None:
    application = apply(store, person(unique, document=f"CLEAR{unique}"), key=f"key-{unique}")
    ref = ApplicantRef(onboarding_id=application.id, customer_id=application.customer_id)
    env = ActivityEnvironment()
    started = await env.run(activities.start_kyc_check, ref)
    assert started.status == "pending" and started.verification_id.startswith("ver_")
    again = await env.run(activities.start_kyc_check, ref)
    assert again.verification_id == started.verification_id  # the provider's idempotency

    deadline = time.monotonic() + 15
    check = started
    while check.status != "completed" and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        check = await env.run(activities.get_kyc_verification, started.verification_id)
    assert check.status == "completed"
    assert check.verdict == "clear"


async def test_screening_finds_a_listed_person_and_passes_a_plain_name(
    activities: OnboardingActivities, store: OnboardingStore, screener: Screener, unique: str
) -> None:
    env = ActivityEnvironment()
    # bfc-s-0001 in infra/sandbox/data/sanctions.simple.csv, middle name left out.
    listed = apply(
        store,
        person(unique, given="Vasiliy", family="Zhernovoy", born="1961-03-14"),
        key=f"listed-{unique}",
    )
    hit = env.run(
        activities.screen_applicant,
        ApplicantRef(onboarding_id=listed.id, customer_id=listed.customer_id),
    )
    assert hit.possible_match is True
    assert hit.entry_id == "bfc-s-0001"
    assert hit.entry_name == "Vasiliy Arkadyevich Zhernovoy"
    assert hit.list_version == screener.list.version
    assert hit.best_score >= hit.threshold
    assert "sanction" in hit.topics
    assert hit.birth_date_match is True

    plain = apply(store, person(unique), key=f"plain-{unique}")
    clean = env.run(
        activities.screen_applicant,
        ApplicantRef(onboarding_id=plain.id, customer_id=plain.customer_id),
    )
    assert clean.possible_match is False
    assert clean.entry_id is None and clean.best_score < clean.threshold
    assert clean.list_version == screener.list.version


async def test_activation_enables_the_user_mails_the_password_link_and_opens_the_wallet(
    activities: OnboardingActivities,
    store: OnboardingStore,
    directory: IdentityDirectory,
    ledger: LedgerStore,
    stack: Stack,
    unique: str,
    created_users: list[str],
) -> None:
    application = apply(store, person(unique, document=f"CLEAR{unique}"), key=f"key-{unique}")
    env = ActivityEnvironment()
    user_id = env.run(
        activities.create_applicant_user,
        ApplicantRef(onboarding_id=application.id, customer_id=application.customer_id),
    )
    created_users.append(user_id)
    request = ActivateInput(
        onboarding_id=application.id,
        customer_id=application.customer_id,
        user_id=user_id,
        currency="EUR",
    )
    activation = await env.run(activities.activate_customer, request)
    again = await env.run(activities.activate_customer, request)  # a retried activity

    assert activation.password_email_sent is True
    assert again == activation
    assert directory.get(user_id).enabled is True
    assert activation.wallet_account_id == wallet_account_id(user_id, "EUR")
    wallet = await ledger.get_account(activation.wallet_account_id)
    assert wallet is not None
    assert (wallet.owner, wallet.currency, wallet.kind) == (user_id, "EUR", AccountKind.LIABILITY)
    assert wallet.debits_must_not_exceed_credits is True

    address = f"applicant.{unique}@dev.bfc.test"
    mails = mails_to(stack.smtp.mailbox, address)
    assert len(mails) == 1  # the retry did not mail a second link
    body = body_of(mails[0])
    # Keycloak's required-action link: an action token for this realm.
    assert re.search(r"/realms/bfc/login-actions/action-token\?key=", body), body[:500]


async def test_a_refusal_mail_is_neutral(
    activities: OnboardingActivities, store: OnboardingStore, stack: Stack, unique: str
) -> None:
    # Someone the list flags: the mail must not give that away.
    application = apply(
        store,
        person(unique, given="Vasiliy", family="Zhernovoy", born="1961-03-14"),
        key=f"key-{unique}",
    )
    env = ActivityEnvironment()
    notice = ApplicantNotice(
        onboarding_id=application.id, customer_id=application.customer_id, kind="rejected"
    )
    env.run(activities.notify_applicant, notice)
    env.run(activities.notify_applicant, dataclasses.replace(notice, kind="reminder", sequence=1))

    mails = mails_to(stack.smtp.mailbox, f"applicant.{unique}@dev.bfc.test", at_least=2)
    by_id = {m["Message-ID"]: m for m in mails}
    rejected = by_id[f"<{application.id}.rejected-0@bfc.example>"]
    words = f"{rejected['Subject']}\n{body_of(rejected)}".casefold()
    assert application.id in words
    for revealing in (
        "sanction",
        "screening",
        "pep",
        "politically",
        "watchlist",
        "risk",
        "zhernovoy",
        "vasiliy",
        "compliance",
        "reason",
    ):
        assert revealing not in words, revealing
    reminder = by_id[f"<{application.id}.reminder-1@bfc.example>"]
    assert "identity document" in body_of(reminder)
