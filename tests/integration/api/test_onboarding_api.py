"""Onboarding end to end: an app applies through the API, the stack's worker runs the
OnboardingWorkflow against the real Keycloak, KYC sandbox (its signed callback reaches the
stack's API), sanctions list, ledger and mail sink; compliance officers decide through the
API. Personal data never reaches Temporal in the clear.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from keycloak import KeycloakAdmin
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client

from infra.audit import list_audit_events
from infra.envelope import EnvelopeCipher
from infra.keycloak import password_login
from infra.onboarding_store import OnboardingStore
from infra.sandbox.kyc_provider import sign as sign_callback
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.vault import SecretStore, connect_vault, load_platform_secrets
from tests.helpers.logins import Logins
from tests.helpers.mailbox import body_of, mails_to
from tests.helpers.payments import pay_and_wait
from tests.helpers.stack import stopped
from tests.integration.api.conftest import app_login

pytestmark = pytest.mark.stack

TERMINAL = {"approved", "rejected", "expired", "canceled"}


@pytest.fixture
def users_to_delete(realm_admin: KeycloakAdmin) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for user_id in made:
        realm_admin.delete_user(user_id)


def application(
    unique: str, *, given: str, family: str, born: str, document: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "given_name": given,
        "family_name": family,
        "date_of_birth": born,
        "email": f"applicant-{unique}@example.com",
        "phone": "+46701234567",
        "country": "SE",
        "address": {
            "line1": "Storgatan 1",
            "city": "Uppsala",
            "postal_code": "75320",
            "country": "SE",
        },
        "currency": "EUR",
    }
    if document is not None:
        body["document"] = {"type": "passport", "number": document}
    return body


async def apply(api: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = await api.post(
        "/v1/onboarding", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 202, response.text
    onboarding_id: str = response.json()["id"]
    assert response.headers["Location"] == f"/v1/onboarding/{onboarding_id}"
    return onboarding_id


async def wait_status(
    api: httpx.AsyncClient,
    headers: dict[str, str],
    onboarding_id: str,
    wanted: set[str],
    timeout: float = 60,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await api.get(f"/v1/onboarding/{onboarding_id}", headers=headers)
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        if state["status"] in wanted:
            return state
        if loop.time() > deadline:
            raise AssertionError(f"{onboarding_id} is {state['status']}, not {wanted}: {state}")
        await asyncio.sleep(0.25)


async def test_a_clean_applicant_becomes_a_customer_who_can_pay(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    logins: Logins,
    settings: Settings,
    realm_admin: KeycloakAdmin,
    users_to_delete: list[str],
    temporal: Client,
    unique: str,
) -> None:
    body = application(
        unique,
        given="Maria",
        family="Lindqvist",
        born="1987-04-12",
        document=f"CLEAR{unique[:8].upper()}",
    )
    onboarding_id = await apply(api, app_headers, body)
    # The app sees the status and what is missing, nothing about screening.
    seen_by_app = await wait_status(api, app_headers, onboarding_id, TERMINAL)
    assert seen_by_app["status"] == "approved", seen_by_app
    assert "screening" not in seen_by_app and "risk_reasons" not in seen_by_app

    staff = await wait_status(api, logins.headers("olivia"), onboarding_id, TERMINAL)
    assert (staff["risk_tier"], staff["kyc_verdict"]) == ("low", "clear")
    assert staff["screening"]["possible_match"] is False
    assert staff["screening"]["list_version"] and staff["screening"]["algorithm"]
    user_id = staff["user_id"]
    users_to_delete.append(user_id)
    assert realm_admin.get_user(user_id)["enabled"] is True

    mailbox = settings.stack_path / "smtp" / "mailbox"
    mails = mails_to(mailbox, body["email"], at_least=2, wait=20)
    texts = [body_of(m) for m in mails]
    assert any("execute-actions" in t or "action-token" in t for t in texts), texts

    # The applicant sets a password (here through the admin API), logs in and pays.
    realm_admin.set_user_password(user_id, f"pw-{unique}", temporary=False)
    token = password_login(settings, staff["customer_id"], f"pw-{unique}")
    headers = {"Authorization": f"Bearer {token}"}
    wallets = (await api.get("/v1/accounts", headers=headers)).json()["data"]
    assert [(w["id"], w["currency"]) for w in wallets] == [(staff["wallet_account_id"], "EUR")]
    topup = await pay_and_wait(
        api,
        headers,
        {
            "kind": "topup",
            "destination_account_id": wallets[0]["id"],
            "amount": 2_000,
            "currency": "EUR",
            "payment_method": "pm_card_visa",
        },
    )
    assert topup["status"] == "succeeded", topup

    # No personal data in Temporal: the raw history (read without the codec) and the
    # search attributes hold none of the applicant's name, birth date or document number.
    raw = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    handle = raw.get_workflow_handle(onboarding_id)
    history = json.dumps((await handle.fetch_history()).to_json_dict())
    described = await handle.describe()
    indexed = described.raw_description.workflow_execution_info.search_attributes.indexed_fields
    attributes = json.dumps({k: str(v) for k, v in indexed.items()})
    for secret in ("Maria", "Lindqvist", "1987-04-12", body["document"]["number"], body["email"]):
        for where, text in (("history", history), ("search attributes", attributes)):
            assert secret not in text, f"{secret!r} in the {where}"
            assert base64.b64encode(secret.encode()).decode()[:-2] not in text, (secret, where)


@pytest.mark.lifecycle  # stops Temporal: runs with the fault tests, last
async def test_an_application_made_while_temporal_is_down_starts_once_it_is_back(
    stack: Stack,
    api: httpx.AsyncClient,
    settings: Settings,
    logins: Logins,
    users_to_delete: list[str],
    unique: str,
) -> None:
    # Its own token: the module's may have expired by the time the last tests run.
    app_headers = app_login(settings)
    body = application(
        unique, given="Jonas", family="Berg", born="1990-02-03", document=f"CLEAR{unique[:8]}"
    )
    key = {**app_headers, "Idempotency-Key": str(uuid.uuid4())}
    async with stopped(stack, "temporal"):
        # Committed, so accepted: it was a 503 that left the application ``received`` for
        # good unless the app sent the same request again.
        response = await api.post("/v1/onboarding", json=body, headers=key)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "received"
        again = await api.post("/v1/onboarding", json=body, headers=key)
        assert (again.status_code, again.json()["id"]) == (202, response.json()["id"])

    # Nobody sends it again: the API's sweep starts its workflow once Temporal is back.
    onboarding_id = response.json()["id"]
    decided = await wait_status(api, logins.headers("olivia"), onboarding_id, TERMINAL, 120)
    users_to_delete.append(decided["user_id"])
    assert decided["status"] == "approved", decided


@pytest.mark.lifecycle  # stops Temporal: runs with the fault tests, last
async def test_a_document_sent_while_temporal_is_down_continues_the_application_once_back(
    stack: Stack,
    api: httpx.AsyncClient,
    settings: Settings,
    logins: Logins,
    users_to_delete: list[str],
    unique: str,
) -> None:
    app_headers = app_login(settings)
    body = application(unique, given="Elsa", family="Holm", born="1988-06-01", document=None)
    onboarding_id = await apply(api, app_headers, body)
    await wait_status(api, app_headers, onboarding_id, {"awaiting_documents"})
    document = {"type": "passport", "number": f"CLEAR{unique[:8]}"}
    async with stopped(stack, "temporal"):
        # Stored, so accepted: it was a 503 that left the workflow waiting for its
        # reminders and expiry unless the app sent the document again.
        sent = await api.post(
            f"/v1/onboarding/{onboarding_id}/documents", json=document, headers=app_headers
        )
        assert sent.status_code == 202, sent.text
        assert sent.json()["missing"] == []

    # Nobody sends it again: the API's sweep tells the workflow once Temporal is back.
    decided = await wait_status(api, logins.headers("olivia"), onboarding_id, TERMINAL, 120)
    users_to_delete.append(decided["user_id"])
    assert decided["status"] == "approved", decided


async def test_a_document_for_a_terminated_workflow_does_not_hold_up_the_sweep(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    logins: Logins,
    temporal: Client,
    engine: Engine,
    cipher: EnvelopeCipher,
    unique: str,
) -> None:
    body = application(unique, given="Axel", family="Lund", born="1979-11-30", document=None)
    onboarding_id = await apply(api, app_headers, body)
    await wait_status(api, app_headers, onboarding_id, {"awaiting_documents"})
    # An operator ends the workflow in the Web UI; the row still says it waits.
    await temporal.get_workflow_handle(onboarding_id).terminate(reason="operator test")
    sent = await api.post(
        f"/v1/onboarding/{onboarding_id}/documents",
        json={"type": "passport", "number": f"CLEAR{unique[:8]}"},
        headers=app_headers,
    )
    assert sent.status_code == 202, sent.text
    store = OnboardingStore(engine, cipher)
    stored = await asyncio.to_thread(store.get, onboarding_id)
    assert stored is not None and stored.documents_unsignalled_since is not None
    # Its workflow is gone: a cancel or a reminder says so, not a 500.
    for path, body_json in (("cancel", {"reason": "test"}), ("reminders", None)):
        refused = await api.post(
            f"/v1/onboarding/{onboarding_id}/{path}", json=body_json,
            headers=logins.headers("olivia"),
        )  # fmt: skip
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "onboarding_closed"
    # The sweep finds no workflow to tell and lets the mark go, rather than trying it
    # first in every pass, ahead of every other application's documents, for good.
    deadline = asyncio.get_running_loop().time() + 30
    while stored is not None and stored.documents_unsignalled_since is not None:
        assert asyncio.get_running_loop().time() < deadline, "the mark stayed"
        await asyncio.sleep(0.5)
        stored = await asyncio.to_thread(store.get, onboarding_id)


async def test_a_sanctions_match_goes_to_review_and_a_rejection_keeps_the_user_out(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    logins: Logins,
    settings: Settings,
    realm_admin: KeycloakAdmin,
    users_to_delete: list[str],
    unique: str,
) -> None:
    # A made-up listed person (infra/sandbox/data/sanctions.simple.csv), transliterated.
    body = application(
        unique,
        given="Wassili",
        family="Schernowoi",
        born="1961-03-14",
        document=f"CLEAR{unique[:8].upper()}",
    )
    onboarding_id = await apply(api, app_headers, body)
    carol = logins.headers("carol")
    case = await wait_status(api, carol, onboarding_id, {"in_review"} | TERMINAL)
    assert case["status"] == "in_review", case
    assert case["risk_tier"] == "high" and "sanctions_possible_match" in case["risk_reasons"]
    assert case["screening"]["entry_id"] == "bfc-s-0001"
    users_to_delete.append(case["user_id"])
    seen_by_app = (await api.get(f"/v1/onboarding/{onboarding_id}", headers=app_headers)).json()
    assert seen_by_app["status"] == "in_review" and "screening" not in seen_by_app

    review = await api.get(f"/v1/reviews/{case['review_id']}", headers=carol)
    assert review.status_code == 200, review.text
    assert "sanctions_possible_match" in [r["code"] for r in review.json()["reasons"]]
    decision = await api.post(
        f"/v1/reviews/{case['review_id']}/decision",
        json={"decision": "reject", "reason": "confirmed listed person"},
        headers=carol,
    )
    assert decision.status_code == 200, decision.text
    final = await wait_status(api, carol, onboarding_id, TERMINAL)
    assert (final["status"], final["decision_reason"]) == ("rejected", "review_rejected")
    assert realm_admin.get_user(case["user_id"])["enabled"] is False
    realm_admin.set_user_password(case["user_id"], f"pw-{unique}", temporary=False)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        password_login(settings, case["customer_id"], f"pw-{unique}")
    assert refused.value.response.json()["error"] == "invalid_grant"  # account disabled
    # The applicant hears a neutral no.
    mailbox = settings.stack_path / "smtp" / "mailbox"
    texts = " ".join(body_of(m).lower() for m in mails_to(mailbox, body["email"], wait=10))
    assert texts and not any(word in texts for word in ("sanction", "screening", "pep", "list"))


async def test_a_high_risk_case_needs_two_officers(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    logins: Logins,
    realm_admin: KeycloakAdmin,
    users_to_delete: list[str],
    unique: str,
) -> None:
    body = application(
        unique,
        given="Elin",
        family="Holmberg",
        born="1990-06-01",
        document=f"FORGED{unique[:8].upper()}",
    )
    onboarding_id = await apply(api, app_headers, body)
    carol, cora = logins.headers("carol"), logins.headers("cora")
    case = await wait_status(api, carol, onboarding_id, {"in_review"} | TERMINAL)
    assert (case["status"], case["risk_tier"]) == ("in_review", "high"), case
    users_to_delete.append(case["user_id"])
    path = f"/v1/reviews/{case['review_id']}/decision"
    approve = {"decision": "approve", "reason": "document re-checked in branch"}
    first = await api.post(path, json=approve, headers=carol)
    assert first.status_code == 200 and first.json()["status"] != "approved", first.text
    again = await api.post(path, json=approve, headers=carol)
    assert again.status_code == 409 and again.json()["code"] == "already_approved"
    second = await api.post(path, json=approve, headers=cora)
    assert second.status_code == 200, second.text
    final = await wait_status(api, carol, onboarding_id, TERMINAL)
    assert final["status"] == "approved"
    assert realm_admin.get_user(case["user_id"])["enabled"] is True


async def test_missing_documents_then_operator_actions(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    logins: Logins,
    settings: Settings,
    engine: Engine,
    unique: str,
) -> None:
    body = application(unique, given="Jonas", family="Berg", born="1979-09-09", document=None)
    onboarding_id = await apply(api, app_headers, body)
    waiting = await wait_status(api, app_headers, onboarding_id, {"awaiting_documents"})
    assert waiting["missing"] == ["document"]

    olivia = logins.headers("olivia")
    reminded = await api.post(f"/v1/onboarding/{onboarding_id}/reminders", headers=olivia)
    assert reminded.status_code == 202, reminded.text
    mailbox = settings.stack_path / "smtp" / "mailbox"
    assert mails_to(mailbox, body["email"], wait=15), "no reminder reached the applicant"
    assert (
        await api.post(f"/v1/onboarding/{onboarding_id}/reminders", headers=app_headers)
    ).status_code == 403

    canceled = await api.post(
        f"/v1/onboarding/{onboarding_id}/cancel",
        json={"reason": "applicant withdrew"},
        headers=olivia,
    )
    assert canceled.status_code == 202, canceled.text
    final = await wait_status(api, olivia, onboarding_id, TERMINAL)
    assert final["status"] == "canceled"
    with Session(engine) as session:
        asked = [
            (e.actor, e.details.get("reason"))
            for e in list_audit_events(session, subject=onboarding_id)
            if e.action == "onboarding.cancel_requested"
        ]
    assert asked == [(logins.subject("olivia"), "applicant withdrew")]
    late = await api.post(
        f"/v1/onboarding/{onboarding_id}/documents",
        json={"type": "passport", "number": "CLEAR123"},
        headers=app_headers,
    )
    assert late.status_code == 409 and late.json()["code"] == "onboarding_closed"


async def test_documents_sent_later_continue_the_application(
    api: httpx.AsyncClient, app_headers: dict[str, str], logins: Logins, unique: str
) -> None:
    body = application(unique, given="Sofia", family="Ek", born="1984-02-29", document=None)
    onboarding_id = await apply(api, app_headers, body)
    await wait_status(api, app_headers, onboarding_id, {"awaiting_documents"})
    sent = await api.post(
        f"/v1/onboarding/{onboarding_id}/documents",
        json={"type": "passport", "number": f"MANUAL{unique[:6].upper()}"},
        headers=app_headers,
    )
    assert sent.status_code == 202, sent.text
    case = await wait_status(api, logins.headers("carol"), onboarding_id, {"in_review"} | TERMINAL)
    assert (case["status"], case["kyc_verdict"]) == ("in_review", "needs_manual_check"), case
    # The document was checked: sent again (a retry) it is accepted, another one is not.
    resent = await api.post(
        f"/v1/onboarding/{onboarding_id}/documents",
        json={"type": "passport", "number": f"MANUAL{unique[:6].upper()}"},
        headers=app_headers,
    )
    assert resent.status_code == 202, resent.text
    other = await api.post(
        f"/v1/onboarding/{onboarding_id}/documents",
        json={"type": "passport", "number": "FORGED999"},
        headers=app_headers,
    )
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "document_on_file"
    canceled = await api.post(
        f"/v1/onboarding/{onboarding_id}/cancel",
        json={"reason": "test over"},
        headers=logins.headers("olivia"),
    )
    assert canceled.status_code == 202


async def test_idempotent_applications_and_refusals(
    api: httpx.AsyncClient, app_headers: dict[str, str], logins: Logins, unique: str
) -> None:
    body = application(
        unique, given="Nils", family="Dahl", born="1970-01-01", document=f"SLOW{unique[:6].upper()}"
    )
    key = {"Idempotency-Key": f"onb-{unique}"}
    first = await api.post("/v1/onboarding", json=body, headers={**app_headers, **key})
    again = await api.post("/v1/onboarding", json=body, headers={**app_headers, **key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = await api.post(
        "/v1/onboarding", json={**body, "family_name": "Dahlin"}, headers={**app_headers, **key}
    )
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    no_key = await api.post("/v1/onboarding", json=body, headers=app_headers)
    assert no_key.status_code == 400
    young = await api.post(
        "/v1/onboarding",
        json={**body, "date_of_birth": "2015-01-01"},
        headers={**app_headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert young.status_code == 422 and young.json()["errors"][0]["field"] == "date_of_birth"
    # A name with no letter or digit leaves sanctions screening nothing to compare.
    for field, name in (("given_name", " "), ("family_name", "-")):
        unscreenable = await api.post(
            "/v1/onboarding",
            json={**body, field: name},
            headers={**app_headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert unscreenable.status_code == 422, unscreenable.text
        assert [e["field"] for e in unscreenable.json()["errors"]] == [field]
    # A residence other than the address's country would be rated by the wrong country.
    elsewhere = {**body, "address": {**body["address"], "country": "IR"}}
    mismatch = await api.post(
        "/v1/onboarding",
        json=elsewhere,
        headers={**app_headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert mismatch.status_code == 422, mismatch.text
    assert [(e["field"], e["code"]) for e in mismatch.json()["errors"]] == [
        ("address.country", "country_mismatch")
    ]
    customer = await api.post("/v1/onboarding", json=body, headers=logins.headers("alice"))
    assert customer.status_code == 403
    # Another party's application is not there for bob, nor for another app's token.
    assert (
        await api.get(f"/v1/onboarding/{first.json()['id']}", headers=logins.headers("bob"))
    ).status_code == 403
    await api.post(
        f"/v1/onboarding/{first.json()['id']}/cancel",
        json={"reason": "test over"},
        headers=logins.headers("olivia"),
    )


async def test_kyc_callbacks_need_the_providers_signature(api: httpx.AsyncClient) -> None:
    body = json.dumps(
        {
            "id": "ver_x",
            "reference": "onb_x",
            "status": "completed",
            "verdict": "clear",
            "checks": {},
        }
    ).encode()
    unsigned = await api.post("/v1/kyc/callbacks", content=body)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "invalid_signature"
    forged = await api.post(
        "/v1/kyc/callbacks", content=body, headers={"KYC-Signature": "t=1,v1=" + "0" * 64}
    )
    assert forged.status_code == 401


async def test_a_signed_progress_note_from_the_provider_is_acknowledged(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    """A provider retries any answer but 2xx, and may give up on an endpoint that keeps
    refusing: a note that the check is still pending is taken, and changes nothing."""
    secret = load_platform_secrets(SecretStore(connect_vault(settings), settings))["kyc"][
        "webhook_signing_secret"
    ]
    body = json.dumps({"id": "ver_x", "reference": "onb_x", "status": "pending"}).encode()
    signature = sign_callback(secret, body, int(time.time()))
    note = await api.post("/v1/kyc/callbacks", content=body, headers={"KYC-Signature": signature})
    assert (note.status_code, note.json()) == (200, {"received": True}), note.text
