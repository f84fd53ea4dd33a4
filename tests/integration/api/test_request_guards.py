"""What every route refuses before it runs: a NUL character (U+0000) anywhere in a request
is a 422 naming the field, and a body over the bound is a 413.

PostgreSQL's text cannot hold a NUL: before the guard, a NUL in a payment id, a query
filter or an operator's reason reached a query and came back as a 500. Before the bound,
the one route without a token (the KYC provider's callbacks) read any body whole.
"""

from __future__ import annotations

import re

import httpx

from tests.helpers.logins import Logins
from tests.integration.api.test_ledger_api import key, leg, open_clearing, open_wallet


def _assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, (response.request.url, response.text)
    problem = response.json()
    assert problem["code"] == "nul_character"
    assert [e["field"] for e in problem["errors"]] == [field]


async def test_every_route_refuses_a_nul_in_its_path_and_query(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    spec = (await api.get("/openapi.json")).json()
    routes = [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]
    with_ids = [(m, p, op) for m, p, op in routes if "{" in p]
    with_queries = [
        (m, p, q["name"])
        for m, p, op in routes
        for q in op.get("parameters", [])
        if q["in"] == "query"
    ]
    assert len(with_ids) >= 10 and len(with_queries) >= 8  # the walk covers the API
    headers = logins.headers("olivia", **{"Idempotency-Key": key()})
    for method, path, _ in with_ids:
        url = re.sub(r"\{[^}]+\}", "pay_%00x", path)
        _assert_refused(await api.request(method, url, headers=headers), "path")
    for method, path, name in with_queries:
        url = re.sub(r"\{[^}]+\}", "x", path)
        response = await api.request(method, url, params={name: "a\u0000"}, headers=headers)
        _assert_refused(response, name)


async def test_a_customer_reading_a_payment_id_with_a_nul_gets_a_422(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    # The first one found by hand: a 500 from the payments table.
    response = await api.get("/v1/payments/pay_%00", headers=logins.headers("alice"))
    _assert_refused(response, "path")


async def test_a_nul_in_an_operators_reason_writes_nothing(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    wallet = await open_wallet(api, logins, "alice")
    clearing = await open_clearing(api, logins)
    headers = logins.headers("olivia", **{"Idempotency-Key": key()})
    body = {"transfers": [leg(clearing, wallet, 700)], "reason": "goodwill\u0000credit"}

    refused = await api.post("/v1/ledger/transfers", headers=headers, json=body)
    _assert_refused(refused, "reason")
    account = await api.get(f"/v1/accounts/{wallet['id']}", headers=logins.headers("alice"))
    assert account.json()["balance"]["posted"] == 0
    # The key was not spent on the refused request: the corrected one is a first, not a 409.
    fixed = await api.post(
        "/v1/ledger/transfers", headers=headers, json={**body, "reason": "goodwill credit"}
    )
    assert fixed.status_code == 201, fixed.text
    assert "Idempotent-Replayed" not in fixed.headers


async def test_an_unsigned_callback_too_large_to_read_is_a_413(api: httpx.AsyncClient) -> None:
    huge = await api.post("/v1/kyc/callbacks", content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert huge.status_code == 413
    assert huge.json()["code"] == "payload_too_large"
    small = await api.post("/v1/kyc/callbacks", content=b"{}")
    assert small.status_code == 401  # within the bound, the signature check answers
