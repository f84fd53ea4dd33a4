"""The ledger over HTTP: roles, ownership, idempotency, audit, problem+json."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.tables import AuditEvent
from tests.helpers.logins import Logins


def key() -> str:
    return f"test-{uuid.uuid4()}"


async def open_wallet(api: httpx.AsyncClient, logins: Logins, owner: str) -> dict[str, object]:
    response = await api.post(
        "/v1/ledger/accounts",
        headers=logins.headers("admin", **{"Idempotency-Key": key()}),
        json={
            "currency": "EUR",
            "kind": "liability",
            "owner": logins.subject(owner),
            "code": "customer_wallet",
            "debits_must_not_exceed_credits": True,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def open_clearing(api: httpx.AsyncClient, logins: Logins) -> dict[str, object]:
    response = await api.post(
        "/v1/ledger/accounts",
        headers=logins.headers("olivia", **{"Idempotency-Key": key()}),
        json={"currency": "EUR", "kind": "asset", "owner": "platform", "code": "card_clearing"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def leg(debit: dict[str, object], credit: dict[str, object], amount: object) -> dict[str, object]:
    return {
        "debit_account_id": debit["id"],
        "credit_account_id": credit["id"],
        "amount": amount,
        "currency": "EUR",
    }


async def test_every_ledger_route_needs_a_token(api: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/accounts"),
        ("GET", "/v1/accounts/acc_x"),
        ("GET", "/v1/accounts/acc_x/entries"),
        ("POST", "/v1/ledger/accounts"),
        ("POST", "/v1/ledger/transfers"),
        ("GET", "/v1/ledger/trial-balance"),
    ]:
        response = await api.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthenticated"
    garbage = await api.get("/v1/accounts", headers={"Authorization": "Bearer not.a.jwt"})
    assert garbage.status_code == 401


async def test_customers_cannot_move_money_by_hand(api: httpx.AsyncClient, logins: Logins) -> None:
    response = await api.post(
        "/v1/ledger/transfers",
        headers=logins.headers("alice", **{"Idempotency-Key": key()}),
        json={"transfers": [], "reason": "free money"},
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert (
        await api.get("/v1/ledger/trial-balance", headers=logins.headers("bob"))
    ).status_code == 403


async def test_a_customer_sees_only_their_own_accounts(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    alice_wallet = await open_wallet(api, logins, "alice")
    bob_wallet = await open_wallet(api, logins, "bob")

    mine = await api.get("/v1/accounts", headers=logins.headers("alice"))
    ids = {a["id"] for a in mine.json()["data"]}
    assert alice_wallet["id"] in ids
    assert bob_wallet["id"] not in ids

    bob_paths = (
        f"/v1/accounts/{bob_wallet['id']}",
        f"/v1/accounts/{bob_wallet['id']}/entries",
        f"/v1/accounts/{bob_wallet['id']}/balance?as_of=2026-01-01T00:00:00Z",
    )
    for path in bob_paths:
        other = await api.get(path, headers=logins.headers("alice"))
        missing = await api.get(path.replace(str(bob_wallet["id"]), "acc_nothing"),
                                headers=logins.headers("alice"))  # fmt: skip
        # Someone else's account and no account at all look exactly the same.
        assert other.status_code == missing.status_code == 404
        assert other.json()["code"] == missing.json()["code"] == "account_not_found"

    staff = await api.get(f"/v1/accounts/{bob_wallet['id']}", headers=logins.headers("olivia"))
    assert staff.status_code == 200


async def test_a_manual_transfer_is_idempotent_and_audited(
    api: httpx.AsyncClient, logins: Logins, engine: Engine
) -> None:
    wallet = await open_wallet(api, logins, "alice")
    clearing = await open_clearing(api, logins)
    the_key = key()
    body = {"transfers": [leg(clearing, wallet, 2_500)], "reason": "goodwill credit, case 42"}
    headers = logins.headers("olivia", **{"Idempotency-Key": the_key})

    first = await api.post("/v1/ledger/transfers", headers=headers, json=body)
    again = await api.post("/v1/ledger/transfers", headers=headers, json=body)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()

    account = await api.get(f"/v1/accounts/{wallet['id']}", headers=logins.headers("alice"))
    assert account.json()["balance"] == {"posted": 2_500, "pending": 0, "available": 2_500}

    changed = {**body, "transfers": [leg(clearing, wallet, 2_600)]}
    conflict = await api.post("/v1/ledger/transfers", headers=headers, json=changed)
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_key_reused"

    transfer_id = first.json()["transfers"][0]["id"]
    with Session(engine) as session:
        events = session.exec(
            select(AuditEvent).where(AuditEvent.subject == transfer_id).order_by(col(AuditEvent.id))
        ).all()
    assert [(e.actor, e.action) for e in events] == [
        (logins.subject("olivia"), "ledger.manual_transfer")
    ]
    assert events[0].details["reason"] == "goodwill credit, case 42"

    past = await api.get(
        f"/v1/accounts/{wallet['id']}/balance",
        params={"as_of": "2000-01-01T00:00:00+00:00"},
        headers=logins.headers("alice"),
    )
    assert past.json()["posted"] == 0
    naive = await api.get(
        f"/v1/accounts/{wallet['id']}/balance",
        params={"as_of": "2000-01-01T00:00:00"},
        headers=logins.headers("alice"),
    )
    assert naive.status_code == 422  # a time without its offset is ambiguous
    assert naive.json()["errors"][0]["field"] == "as_of"

    entries = await api.get(f"/v1/accounts/{wallet['id']}/entries", headers=logins.headers("alice"))
    assert [(e["side"], e["amount"], e["running_balance"]) for e in entries.json()["data"]] == [
        ("credit", 2_500, 2_500)
    ]


async def test_another_batch_under_the_same_key_is_a_conflict_not_a_replay(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    wallet = await open_wallet(api, logins, "alice")
    clearing = await open_clearing(api, logins)
    headers = logins.headers("olivia", **{"Idempotency-Key": key()})
    both = [leg(clearing, wallet, 1_000), leg(clearing, wallet, 200)]
    first = await api.post(
        "/v1/ledger/transfers", headers=headers, json={"transfers": both, "reason": "two legs"}
    )
    assert first.status_code == 201, first.text
    # The first leg alone, then the batch with its second leg changed: other requests.
    for transfers in ([both[0]], [both[0], leg(clearing, wallet, 300)]):
        other = await api.post(
            "/v1/ledger/transfers", headers=headers,
            json={"transfers": transfers, "reason": "two legs"},
        )  # fmt: skip
        assert other.status_code == 409, other.text
        assert other.json()["code"] == "idempotency_key_reused"

    # A refused batch: a corrected second leg under its key is not answered with the
    # first refusal either.
    refused_key = logins.headers("olivia", **{"Idempotency-Key": key()})
    overdraw = [leg(clearing, wallet, 100), leg(wallet, clearing, 10**9)]
    refused = await api.post(
        "/v1/ledger/transfers", headers=refused_key,
        json={"transfers": overdraw, "reason": "overdraw"},
    )  # fmt: skip
    assert refused.json()["code"] == "insufficient_funds"
    corrected = await api.post(
        "/v1/ledger/transfers", headers=refused_key,
        json={"transfers": [overdraw[0], leg(wallet, clearing, 50)], "reason": "overdraw"},
    )  # fmt: skip
    assert (corrected.status_code, corrected.json()["code"]) == (409, "idempotency_key_reused")
    account = await api.get(f"/v1/accounts/{wallet['id']}", headers=logins.headers("alice"))
    assert account.json()["balance"]["posted"] == 1_200


async def test_an_account_takes_one_balance_limit_at_most(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    response = await api.post(
        "/v1/ledger/accounts",
        headers=logins.headers("admin", **{"Idempotency-Key": key()}),
        json={"currency": "EUR", "kind": "asset", "owner": "platform", "code": "both_limits",
              "debits_must_not_exceed_credits": True, "credits_must_not_exceed_debits": True},
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["credits_must_not_exceed_debits"]


@pytest.mark.parametrize("timeout", [True, "60", 60.0])
async def test_a_hold_timeout_is_whole_seconds(
    api: httpx.AsyncClient, logins: Logins, timeout: object
) -> None:
    wallet = await open_wallet(api, logins, "bob")
    clearing = await open_clearing(api, logins)
    pending = {**leg(clearing, wallet, 100), "kind": "pending", "timeout_seconds": timeout}
    response = await api.post(
        "/v1/ledger/transfers",
        headers=logins.headers("admin", **{"Idempotency-Key": key()}),
        json={"transfers": [pending], "reason": "a hold"},
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["transfers.0.timeout_seconds"]


async def test_a_leg_missing_what_its_kind_needs_is_named_and_the_key_stays_free(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    wallet = await open_wallet(api, logins, "bob")
    clearing = await open_clearing(api, logins)
    headers = logins.headers("admin", **{"Idempotency-Key": key()})
    incomplete = {k: v for k, v in leg(clearing, wallet, 100).items() if k != "amount"}
    legs = [incomplete, {"kind": "void_pending"}]
    refused = await api.post(
        "/v1/ledger/transfers", headers=headers, json={"transfers": legs, "reason": "typo"}
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == [
        "transfers.0.amount",
        "transfers.1.pending_id",
    ]
    corrected = await api.post(
        "/v1/ledger/transfers", headers=headers,
        json={"transfers": [leg(clearing, wallet, 100)], "reason": "typo"},
    )  # fmt: skip
    assert corrected.status_code == 201, corrected.text


async def test_the_ledger_refusal_comes_back_as_a_problem(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    wallet = await open_wallet(api, logins, "bob")
    clearing = await open_clearing(api, logins)
    response = await api.post(
        "/v1/ledger/transfers",
        headers=logins.headers("admin", **{"Idempotency-Key": key()}),
        json={"transfers": [leg(wallet, clearing, 1)], "reason": "overdraw on purpose"},
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "insufficient_funds"
    assert wallet["id"] in response.json()["detail"]


@pytest.mark.parametrize(
    ("amount", "field"),
    [
        (10.5, "transfers.0.amount"),
        ("100", "transfers.0.amount"),
        (True, "transfers.0.amount"),
        (0, "transfers.0.amount"),
        (10**16, "transfers.0.amount"),
    ],
)
async def test_money_must_be_whole_minor_units(
    api: httpx.AsyncClient, logins: Logins, amount: object, field: str
) -> None:
    wallet = await open_wallet(api, logins, "bob")
    clearing = await open_clearing(api, logins)
    response = await api.post(
        "/v1/ledger/transfers",
        headers=logins.headers("admin", **{"Idempotency-Key": key()}),
        json={"transfers": [leg(clearing, wallet, amount)], "reason": "validation"},
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]
    balance = await api.get(f"/v1/accounts/{wallet['id']}", headers=logins.headers("admin"))
    assert balance.json()["balance"]["posted"] == 0  # nothing half-done


async def test_an_idempotency_key_is_required_and_named(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    response = await api.post(
        "/v1/ledger/transfers",
        headers=logins.headers("admin"),
        json={"transfers": [], "reason": "x"},
    )
    assert response.status_code == 422
    assert "Idempotency-Key" in {e["field"] for e in response.json()["errors"]}


async def test_staff_read_the_trial_balance(api: httpx.AsyncClient, logins: Logins) -> None:
    response = await api.get("/v1/ledger/trial-balance", headers=logins.headers("olivia"))
    assert response.status_code == 200
    assert response.json()["balanced"] is True


async def test_an_account_request_sent_again_under_its_key_is_a_marked_replay(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    headers = logins.headers("admin", **{"Idempotency-Key": key()})
    body = {"currency": "EUR", "kind": "asset", "owner": "platform", "code": "replayed"}
    first = await api.post("/v1/ledger/accounts", headers=headers, json=body)
    again = await api.post("/v1/ledger/accounts", headers=headers, json=body)
    assert (first.status_code, again.status_code) == (201, 201)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
