"""An officer's path through the API: the queue, a case, four-eyes decisions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from keycloak import KeycloakAdmin
from temporalio.client import Client

from infra.keycloak import password_login
from infra.settings import Settings
from models.ids import new_id
from models.review import OpenReviewInput, ReviewReason, SlaPolicy
from tests.helpers.logins import Logins
from workflows.review import ComplianceReviewWorkflow


async def open_case(temporal: Client, settings: Settings, logins: Logins) -> str:
    review_id = new_id("rev")
    await temporal.start_workflow(
        ComplianceReviewWorkflow.run,
        OpenReviewInput(
            review_id=review_id,
            kind="payment",
            subject_id=new_id("pay"),
            customer_subject=logins.subject("alice"),
            reasons=[
                ReviewReason(code="amount_over_review_threshold", evidence={"amount": 150000})
            ],
            required_approvals=2,
            amount_minor=150_000,
            currency="EUR",
            sla=SlaPolicy(),
        ),
        id=review_id,
        task_queue=settings.task_queue,
    )
    return review_id


@pytest.fixture
def supervisor(
    realm_admin: KeycloakAdmin, settings: Settings, unique: str
) -> Iterator[dict[str, str]]:
    """A compliance officer who is also a supervisor (the dev realm has none)."""
    username, password = f"supervisor-{unique}", f"pw-{unique}"
    user_id = realm_admin.create_user(
        {
            "username": username,
            "email": f"{username}@dev.bfc.test",
            "firstName": "Sam",
            "lastName": "Visor",
            "enabled": True,
            "emailVerified": True,
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        }
    )
    try:
        realm_admin.assign_realm_roles(
            user_id, [realm_admin.get_realm_role(r) for r in ("compliance_officer", "admin")]
        )
        token = password_login(settings, username, password)
        yield {"Authorization": f"Bearer {token}"}
    finally:
        realm_admin.delete_user(user_id)


async def test_two_officers_decide_a_four_eyes_case(
    api: httpx.AsyncClient, temporal: Client, settings: Settings, logins: Logins
) -> None:
    review_id = await open_case(temporal, settings, logins)

    for _ in range(50):  # visibility catches up within moments
        queue = await api.get(
            "/v1/reviews", params={"kind": "payment"}, headers=logins.headers("carol")
        )
        if review_id in {c["review_id"] for c in queue.json()["data"]}:
            break
        await asyncio.sleep(0.2)
    listed = {c["review_id"]: c for c in queue.json()["data"]}
    assert listed[review_id]["status"] == "open"
    assert listed[review_id]["due_at"] is not None

    case = await api.get(f"/v1/reviews/{review_id}", headers=logins.headers("olivia"))
    assert case.status_code == 200
    assert case.json()["reasons"][0]["code"] == "amount_over_review_threshold"

    path = f"/v1/reviews/{review_id}/decision"
    approve = {"decision": "approve", "reason": "source of funds verified"}
    # Both officers happen to send the same Idempotency-Key: keys are each caller's own.
    same_key = {"Idempotency-Key": f"decide-{review_id}"}
    first = await api.post(path, json=approve, headers=logins.headers("carol") | same_key)
    assert first.status_code == 200, first.text
    assert (first.json()["status"], len(first.json()["approvals"])) == ("open", 1)
    replayed = await api.post(path, json=approve, headers=logins.headers("carol") | same_key)
    assert (replayed.status_code, len(replayed.json()["approvals"])) == (200, 1)
    # The same key with another decision was not applied: not answered as if it had been.
    reject = {"decision": "reject", "reason": "changed my mind"}
    reused = await api.post(path, json=reject, headers=logins.headers("carol") | same_key)
    assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")
    unchanged = (await api.get(f"/v1/reviews/{review_id}", headers=logins.headers("olivia"))).json()
    assert (unchanged["status"], [h["decision"] for h in unchanged["history"]]) == (
        "open",
        ["approve"],
    )

    again = await api.post(path, json=approve, headers=logins.headers("carol"))
    assert again.status_code == 409
    assert again.json()["code"] == "already_approved"
    operator = await api.post(path, json=approve, headers=logins.headers("olivia"))
    assert operator.status_code == 403  # operators read cases, officers decide them
    customer = await api.get("/v1/reviews", headers=logins.headers("alice"))
    assert customer.status_code == 403

    second = await api.post(path, json=approve, headers=logins.headers("cora") | same_key)
    assert second.status_code == 200
    assert second.json()["status"] == "approved"
    assert len(second.json()["approvals"]) == 2
    outcome = await temporal.get_workflow_handle(review_id).result()
    assert outcome["outcome"] == "approved"

    # Decided, the case leaves the open queue for the closed list.
    for _ in range(50):
        closed = await api.get(
            "/v1/reviews", params={"status": "closed"}, headers=logins.headers("olivia")
        )
        assert closed.status_code == 200, closed.text
        if review_id in {c["review_id"] for c in closed.json()["data"]}:
            break
        await asyncio.sleep(0.2)
    assert {c["review_id"]: c["status"] for c in closed.json()["data"]}[review_id] == "approved"
    queue = await api.get("/v1/reviews", headers=logins.headers("olivia"))
    assert review_id not in {c["review_id"] for c in queue.json()["data"]}

    late = await api.post(path, json=approve, headers=logins.headers("cora"))
    assert late.status_code == 409
    assert late.json()["code"] in {"case_closed", "already_approved"}


async def test_an_unknown_case_is_not_found(api: httpx.AsyncClient, logins: Logins) -> None:
    response = await api.get("/v1/reviews/rev_nothing", headers=logins.headers("carol"))
    assert response.status_code == 404
    assert response.json()["code"] == "review_not_found"


async def test_a_supervisor_hands_a_case_only_to_an_officer(
    api: httpx.AsyncClient,
    temporal: Client,
    settings: Settings,
    logins: Logins,
    supervisor: dict[str, str],
) -> None:
    review_id = await open_case(temporal, settings, logins)
    path = f"/v1/reviews/{review_id}/assign"
    try:
        for who in (logins.subject("alice"), "no-such-officer"):
            refused = await api.post(path, json={"assignee": who}, headers=supervisor)
            assert refused.status_code == 422, refused.text
            problem = refused.json()
            assert problem["code"] == "assignee_not_an_officer"
            assert problem["errors"][0]["field"] == "assignee"
        empty = await api.post(path, json={"assignee": ""}, headers=supervisor)
        assert (empty.status_code, empty.json()["errors"][0]["field"]) == (422, "assignee")
        case = await api.get(f"/v1/reviews/{review_id}", headers=logins.headers("carol"))
        assert case.json()["assignee"] is None  # nothing half-done

        cora = logins.subject("cora")
        handed = await api.post(path, json={"assignee": cora}, headers=supervisor)
        assert handed.status_code == 200, handed.text
        assert handed.json()["assignee"] == cora
        # An officer who is not a supervisor still only takes cases for themself.
        carol = await api.post(path, json={"assignee": cora}, headers=logins.headers("carol"))
        assert (carol.status_code, carol.json()["code"]) == (403, "not_a_supervisor")
    finally:
        await temporal.get_workflow_handle(review_id).terminate(reason="test over")
