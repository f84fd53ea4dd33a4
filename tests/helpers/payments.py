"""Paying through the API in tests: wallets, payments to their end, the gateway's view."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from infra.settings import Settings
from infra.vault import SecretStore, connect_vault

TERMINAL = {"succeeded", "declined", "failed", "canceled", "partially_refunded", "refunded"}


async def open_wallet(api: httpx.AsyncClient, headers: dict[str, str], currency: str) -> str:
    response = await api.post("/v1/accounts", json={"currency": currency}, headers=headers)
    assert response.status_code in {200, 201}, response.text
    wallet_id: str = response.json()["id"]
    return wallet_id


async def available(api: httpx.AsyncClient, headers: dict[str, str], account_id: str) -> int:
    response = await api.get(f"/v1/accounts/{account_id}", headers=headers)
    assert response.status_code == 200, response.text
    balance: dict[str, int] = response.json()["balance"]
    return balance["available"]


async def pay(
    api: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    response = await api.post(
        "/v1/payments", json=body, headers={**headers, "Idempotency-Key": key or str(uuid.uuid4())}
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/payments/{response.json()['id']}"
    payment: dict[str, Any] = response.json()
    return payment


async def wait_for(
    api: httpx.AsyncClient,
    headers: dict[str, str],
    payment_id: str,
    statuses: set[str] = TERMINAL,
    timeout: float = 60.0,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await api.get(f"/v1/payments/{payment_id}", headers=headers)
        assert response.status_code == 200, response.text
        payment: dict[str, Any] = response.json()
        if payment["status"] in statuses:
            return payment
        if loop.time() > deadline:
            raise AssertionError(f"payment {payment_id} still {payment['status']}: {payment}")
        await asyncio.sleep(0.1)


async def pay_and_wait(
    api: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    payment = await pay(api, headers, body)
    return await wait_for(api, headers, payment["id"])


async def wait_for_refund(
    api: httpx.AsyncClient,
    headers: dict[str, str],
    payment_id: str,
    refund_id: str,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The refund once it is no longer pending; it must have succeeded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        refunds = await api.get(f"/v1/payments/{payment_id}/refunds", headers=headers)
        assert refunds.status_code == 200, refunds.text
        found: dict[str, Any] = {r["id"]: r for r in refunds.json()}[refund_id]
        if found["status"] != "pending":
            assert found["status"] == "succeeded", found
            return found
        if loop.time() > deadline:
            raise AssertionError(f"refund {refund_id} still pending")
        await asyncio.sleep(0.1)


class GatewayView:
    """What the card gateway (the stack's sandbox) holds for one of our payments."""

    def __init__(self, settings: Settings) -> None:
        key = SecretStore(connect_vault(settings), settings).read("gateway")["api_key"]
        self._client = httpx.AsyncClient(
            base_url=settings.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    async def _search(self, path: str, payment_id: str) -> list[dict[str, Any]]:
        response = await self._client.get(
            path, params={"query": f"metadata['payment_id']:'{payment_id}'", "limit": 100}
        )
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def charges(self, payment_id: str) -> list[dict[str, Any]]:
        """Every payment intent for the payment (a correct platform makes at most one)."""
        return await self._search("/v1/payment_intents/search", payment_id)

    async def payouts(self, payment_id: str) -> list[dict[str, Any]]:
        """Every payout for the payment sent in the last hour (Stripe lists payouts by
        time; it has no search for them)."""
        since = int(time.time()) - 3600
        params: dict[str, str | int] = {"created[gte]": since, "limit": 100}
        ours: list[dict[str, Any]] = []
        while True:
            response = await self._client.get("/v1/payouts", params=params)
            response.raise_for_status()
            page = response.json()
            ours += [p for p in page["data"] if p["metadata"].get("payment_id") == payment_id]
            if not page["has_more"]:
                return ours
            params["starting_after"] = page["data"][-1]["id"]

    async def refunds(self, intent_id: str) -> list[dict[str, Any]]:
        response = await self._client.get("/v1/refunds", params={"payment_intent": intent_id})
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def aclose(self) -> None:
        await self._client.aclose()
