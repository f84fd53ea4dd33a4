"""The card gateway sandbox through our connector, over real HTTP.

The sandbox runs as a process of its own on a free port with a temporary home and a
random key (started and stopped here, by pid); it needs nothing else of the stack.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import gateway as gateway_module
from infra.gateway import (
    CardGateway,
    GatewayDeclined,
    GatewayRejected,
    GatewayRetryable,
    GatewayUnknownOutcome,
)

ROOT = Path(__file__).resolve().parents[2]
HANG_SECONDS = 3.0
IMPATIENT_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sandbox:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.key = f"sk_test_{secrets.token_hex(16)}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "BFC_GATEWAY_API_KEY": self.key,
            "BFC_GATEWAY_HOST": "127.0.0.1",
            "BFC_GATEWAY_PORT": str(self.port),
            "BFC_GATEWAY_HOME": str(self.home),
            "BFC_GATEWAY_HANG_SECONDS": str(HANG_SECONDS),
            "BFC_GATEWAY_SLOW_SECONDS": "0.3",
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "infra.sandbox.card_gateway"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the sandbox exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail("the sandbox did not answer /healthz in 20 s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        # SIGKILL: nothing gets a chance to flush; only what was committed may survive.
        self.stop(signal.SIGKILL)
        self.start()

    def client(self, *, key: str | None = None, timeout: float = 10.0) -> CardGateway:
        return CardGateway(self.url, key or self.key, timeout=timeout, connect_timeout=2.0)

    async def intents_of(self, payment_id: str) -> list[dict[str, Any]]:
        """Every intent the gateway holds for a payment (how many charges it saw)."""
        async with httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}
        ) as http:
            response = await http.get(
                "/v1/payment_intents/search",
                params={"query": f"metadata['payment_id']:'{payment_id}'", "limit": 100},
            )
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("gateway"))
    box.start()
    yield box
    box.stop()


@pytest.fixture
async def gw(sandbox: Sandbox) -> AsyncIterator[CardGateway]:
    async with sandbox.client() as client:
        yield client


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def pay() -> str:
    return f"pay_{uuid.uuid4().hex[:16]}"


async def _charge(
    gw: CardGateway,
    pay: str,
    *,
    key: str | None = None,
    amount: int = 1000,
    payment_method: str = "pm_card_visa",
):
    return await gw.charge(
        idempotency_key=key or f"{pay}:charge",
        payment_id=pay,
        amount=amount,
        currency="EUR",
        payment_method=payment_method,
    )


# -- charges ---------------------------------------------------------------------------------


async def test_a_visa_charge_succeeds_and_is_found_by_payment_id(gw: CardGateway, pay: str):
    charge = await _charge(gw, pay, amount=1234)

    assert charge.succeeded
    assert (charge.amount, charge.amount_received, charge.currency) == (1234, 1234, "EUR")
    assert charge.payment_id == pay
    assert charge.id.startswith("pi_")
    assert await gw.find_charge(pay) == charge


@pytest.mark.parametrize(
    ("payment_method", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedFraudulent", "fraudulent"),
    ],
)
async def test_declined_cards_answer_their_decline_code(
    gw: CardGateway, pay: str, payment_method: str, decline_code: str
):
    with pytest.raises(GatewayDeclined) as caught:
        await _charge(gw, pay, payment_method=payment_method)

    assert caught.value.code == decline_code
    found = await gw.find_charge(pay)
    assert found is not None
    assert found.status == "requires_payment_method"
    assert (found.amount_received, found.decline_code) == (0, decline_code)
    # A declined charge replays as the same decline, without a second attempt.
    with pytest.raises(GatewayDeclined):
        await _charge(gw, pay, payment_method=payment_method)


async def test_the_same_key_replays_without_charging_again(
    gw: CardGateway, sandbox: Sandbox, pay: str
):
    first = await _charge(gw, pay)
    second = await _charge(gw, pay)

    assert second == first
    assert len(await sandbox.intents_of(pay)) == 1


async def test_the_same_key_with_another_amount_is_rejected(
    gw: CardGateway, sandbox: Sandbox, pay: str
):
    await _charge(gw, pay, amount=1000)

    with pytest.raises(GatewayRejected) as caught:
        await _charge(gw, pay, amount=2000)

    assert caught.value.code == "idempotency_error"
    assert caught.value.status == 400
    assert len(await sandbox.intents_of(pay)) == 1


async def test_fifty_concurrent_identical_charges_charge_once(
    gw: CardGateway, sandbox: Sandbox, pay: str
):
    # The slow card keeps the first request inside the gateway while the others arrive.
    charges = await asyncio.gather(
        *(_charge(gw, pay, payment_method="pm_bfc_slow") for _ in range(50))
    )

    assert len({c.id for c in charges}) == 1
    assert len(await sandbox.intents_of(pay)) == 1


async def test_a_timeout_after_the_charge_is_an_unknown_outcome_resolved_by_lookup(
    sandbox: Sandbox, pay: str
):
    async with sandbox.client(timeout=IMPATIENT_TIMEOUT) as impatient:
        with pytest.raises(GatewayUnknownOutcome):
            await _charge(impatient, pay, payment_method="pm_bfc_timeoutAfterCharge")

        found = await impatient.find_charge(pay)
        assert found is not None
        assert found.succeeded
        # The same key answers the recorded success at once, well inside the timeout.
        replayed = await _charge(impatient, pay, payment_method="pm_bfc_timeoutAfterCharge")

    assert replayed == found
    assert len(await sandbox.intents_of(pay)) == 1


async def test_two_server_errors_are_retryable_and_the_third_attempt_charges_once(
    gw: CardGateway, sandbox: Sandbox, pay: str
):
    for _ in range(2):
        with pytest.raises(GatewayRetryable) as caught:
            await _charge(gw, pay, payment_method="pm_bfc_error500Twice")
        assert caught.value.status == 500
        assert await sandbox.intents_of(pay) == []

    charge = await _charge(gw, pay, payment_method="pm_bfc_error500Twice")

    assert charge.succeeded
    assert len(await sandbox.intents_of(pay)) == 1


async def test_a_slow_charge_still_succeeds(gw: CardGateway, pay: str):
    assert (await _charge(gw, pay, payment_method="pm_bfc_slow")).succeeded


async def test_an_unknown_payment_method_is_rejected(gw: CardGateway, sandbox: Sandbox, pay: str):
    with pytest.raises(GatewayRejected) as caught:
        await _charge(gw, pay, payment_method="pm_card_doesNotExist")

    assert caught.value.code == "resource_missing"
    assert await sandbox.intents_of(pay) == []


async def test_a_bad_api_key_is_rejected(sandbox: Sandbox, pay: str):
    async with sandbox.client(key="sk_test_wrong") as wrong:
        with pytest.raises(GatewayRejected) as caught:
            await _charge(wrong, pay)

    assert caught.value.status == 401
    assert await sandbox.intents_of(pay) == []


async def test_an_unreachable_gateway_is_retryable(pay: str):
    async with CardGateway(
        f"http://127.0.0.1:{_free_port()}", "k", timeout=1.0, connect_timeout=1.0
    ) as nowhere:
        with pytest.raises(GatewayRetryable):
            await _charge(nowhere, pay)


# -- refunds ---------------------------------------------------------------------------------


async def test_partial_refunds_never_exceed_what_was_received(gw: CardGateway, pay: str):
    charge = await _charge(gw, pay, amount=1000)

    async def refund(step: str, amount: int):
        return await gw.refund(
            idempotency_key=f"{pay}:{step}", charge_id=charge.id, amount=amount, payment_id=pay
        )

    first = await refund("refund-1", 300)
    await refund("refund-2", 500)
    with pytest.raises(GatewayRejected) as too_much:
        await refund("refund-3", 300)
    assert too_much.value.code == "amount_too_large"
    assert await refund("refund-1", 300) == first  # a replay, not a third refund

    refunds = await gw.refunds_of(charge.id)
    assert sorted(r.amount for r in refunds) == [300, 500]
    assert {r.charge_id for r in refunds} == {charge.id}

    await refund("refund-4", 200)
    with pytest.raises(GatewayRejected) as nothing_left:
        await refund("refund-5", 1)
    assert nothing_left.value.code == "charge_already_refunded"
    assert sum(r.amount for r in await gw.refunds_of(charge.id)) == 1000
    # Each is found again by its key, as a retry does once the provider forgot the key.
    assert await gw.find_refund(charge.id, f"{pay}:refund-1") == first
    assert await gw.find_refund(charge.id, f"{pay}:refund-5") is None


async def test_a_declined_charge_cannot_be_refunded(gw: CardGateway, pay: str):
    with pytest.raises(GatewayDeclined) as caught:
        await _charge(gw, pay, payment_method="pm_card_chargeDeclined")
    assert caught.value.charge is not None

    with pytest.raises(GatewayRejected):
        await gw.refund(
            idempotency_key=f"{pay}:refund",
            charge_id=caught.value.charge.id,
            amount=100,
            payment_id=pay,
        )


# -- payouts ---------------------------------------------------------------------------------


async def _payout(gw: CardGateway, pay: str, destination: str, amount: int = 700):
    return await gw.payout(
        idempotency_key=f"{pay}:payout",
        payment_id=pay,
        amount=amount,
        currency="EUR",
        destination=destination,
    )


async def test_a_payout_to_an_open_account_is_paid(gw: CardGateway, pay: str):
    payout = await _payout(gw, pay, "ba_bfc_ok")

    assert payout.paid
    assert (payout.amount, payout.currency, payout.payment_id) == (700, "EUR", pay)
    assert await gw.find_payout(pay, created_since=_now()) == payout
    assert await _payout(gw, pay, "ba_bfc_ok") == payout


async def test_a_payout_to_a_closed_account_fails_with_account_closed(gw: CardGateway, pay: str):
    with pytest.raises(GatewayDeclined) as caught:
        await _payout(gw, pay, "ba_bfc_closed")

    assert caught.value.code == "account_closed"
    found = await gw.find_payout(pay, created_since=_now())
    assert found is not None
    assert (found.status, found.failure_code) == ("failed", "account_closed")


async def test_a_payout_timeout_is_an_unknown_outcome_resolved_by_lookup(
    sandbox: Sandbox, pay: str
):
    async with sandbox.client(timeout=IMPATIENT_TIMEOUT) as impatient:
        with pytest.raises(GatewayUnknownOutcome):
            await _payout(impatient, pay, "ba_bfc_timeoutAfterPayout")
        found = await impatient.find_payout(pay, created_since=_now())

    assert found is not None
    assert found.paid


async def test_find_payout_answers_none_for_an_unknown_payment(gw: CardGateway, pay: str):
    assert await gw.find_payout(pay, created_since=_now()) is None
    assert await gw.find_charge(pay) is None


async def test_find_payout_lists_the_payouts_since_the_payment_as_stripe_does(
    gw: CardGateway, pay: str, monkeypatch: pytest.MonkeyPatch
):
    """Stripe cannot search payouts: the lookup pages through those created since the
    payment (newest first) and picks ours by its metadata, never guessing absent."""
    accepted = _now()
    ours = await _payout(gw, pay, "ba_bfc_ok")
    for i in range(gateway_module.PAGE_SIZE):  # ours ends up on the second page
        await _payout(gw, f"{pay}-other-{i}", "ba_bfc_ok", amount=100 + i)

    assert await gw.find_payout(pay, created_since=accepted) == ours
    # Only payouts since the payment (less the clock slack) are read.
    later = accepted + gateway_module.CLOCK_SLACK + dt.timedelta(minutes=5)
    assert await gw.find_payout(pay, created_since=later) is None
    # More to read than a lookup reads: refused, not answered "none".
    monkeypatch.setattr(gateway_module, "MAX_LISTED_PAYOUTS", gateway_module.PAGE_SIZE)
    with pytest.raises(GatewayRejected, match="payouts since"):
        await gw.find_payout(pay, created_since=accepted)


async def test_the_sandbox_lists_payouts_like_stripe_and_has_no_payout_search(
    sandbox: Sandbox, gw: CardGateway, pay: str
):
    await _payout(gw, pay, "ba_bfc_ok")
    async with httpx.AsyncClient(
        base_url=sandbox.url, headers={"Authorization": f"Bearer {sandbox.key}"}
    ) as http:
        since = int(time.time()) - 60
        page = (await http.get("/v1/payouts", params={"created[gte]": since, "limit": 1})).json()
        assert (page["object"], page["data"][0]["metadata"]["payment_id"]) == ("list", pay)
        future = await http.get("/v1/payouts", params={"created[gt]": int(time.time()) + 60})
        assert future.json()["data"] == []
        bad = await http.get("/v1/payouts", params={"created[gte]": "yesterday"})
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "created[gte]")
        unknown = await http.get("/v1/payouts", params={"query": f"metadata['payment_id']:'{pay}'"})
        assert unknown.json()["error"]["code"] == "parameter_unknown"
        assert (await http.get("/v1/payouts/search")).status_code == 404


# -- settlement ------------------------------------------------------------------------------


async def test_the_settlement_report_lists_the_days_money_movements(gw: CardGateway, pay: str):
    before = dt.datetime.now(dt.UTC).date()
    charge = await _charge(gw, pay, amount=2000)
    refund = await gw.refund(
        idempotency_key=f"{pay}:refund", charge_id=charge.id, amount=500, payment_id=pay
    )
    payout = await _payout(gw, f"{pay}_out", "ba_bfc_ok", amount=900)
    declined = f"{pay}_declined"
    with pytest.raises(GatewayDeclined):
        await _charge(gw, declined, payment_method="pm_card_chargeDeclined")
    after = dt.datetime.now(dt.UTC).date()

    lines = [line for day in sorted({before, after}) for line in await gw.settlement_report(day)]
    ours = [line for line in lines if line.reference in (pay, f"{pay}_out", declined)]

    # One line per movement; the declined charge moved no money.
    assert sorted(line.type for line in ours) == ["charge", "payout", "refund"]
    charge_line, refund_line, payout_line = (
        next(line for line in ours if line.type == kind) for kind in ("charge", "refund", "payout")
    )
    assert (charge_line.type, charge_line.payment_intent, charge_line.amount) == (
        "charge",
        charge.id,
        2000,
    )
    assert charge_line.fee > 0
    assert charge_line.net == charge_line.amount - charge_line.fee
    assert charge_line.currency == "EUR"
    assert (refund_line.id, refund_line.type, refund_line.amount) == (refund.id, "refund", -500)
    assert refund_line.reference == pay
    assert (payout_line.id, payout_line.type, payout_line.amount) == (payout.id, "payout", -900)
    assert payout_line.payment_intent is None
    assert all(line.created.date() in (before, after) for line in ours)


# -- durability ------------------------------------------------------------------------------


async def test_state_survives_a_restart_of_the_sandbox(sandbox: Sandbox, pay: str):
    async with sandbox.client() as gw:
        charge = await _charge(gw, pay)

    sandbox.restart()

    async with sandbox.client() as gw:
        assert await gw.find_charge(pay) == charge
        # The idempotency record survived too: the same key still answers the same charge.
        assert await _charge(gw, pay) == charge
    assert len(await sandbox.intents_of(pay)) == 1
