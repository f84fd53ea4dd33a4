"""An in-memory outside world for PaymentWorkflow and RefundWorkflow on the test server.

Every activity the sagas schedule by name is replaced by a fake bound to one ``World``:

- ``FakeLedger``: wallets with balances, and two-phase transfers (a hold is ``pending``
  until it is ``posted`` or ``voided``); a transfer id is applied once, as in the real
  ledger, and a wallet refuses a hold it cannot cover (``insufficient_funds``).
- ``FakeGateway``: charges, payouts and refunds keyed by Idempotency-Key (a key is applied
  once, a replay returns the first answer); each money-moving call follows the next step
  of a script, so a test says "time out after applying it" or "fail twice, then succeed".
- announcing an end (``workflows.notification.announce``): ``record_event`` keeps every
  event a saga announced, ``email_customer`` "sends" it, and, as the app has a webhook
  endpoint, a stand-in for EventDeliveryWorkflow hands back the event it was started with;
- the compliance review's audit activities.

Tests then assert side effects (what was held, posted, voided, charged, refunded) and not
only the saga's final status. ``tests/workflows/record_payment_histories.py`` drives the
same world to record the histories the replay tests read.

Each world runs on a time-skipping test server of its own (``fresh_environment``, ~0.1 s to
start), not on the session's shared one: on the test server, a parent that completes right
after starting an ABANDON child (every payment announcing its end) leaves time skipping
locked for the rest of that server's life, so later SLA timers would run in real time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from models.errors import LEDGER_ERRORS
from models.notifications import (
    EMAIL_CUSTOMER,
    EVENT_DELIVERY_WORKFLOW,
    RECORD_EVENT,
    EmailOutcome,
    PlatformEvent,
    RecordedEvent,
)
from models.payment import (
    CHARGE_CARD,
    FIND_CHARGE,
    FIND_PAYOUT,
    GATEWAY_CLEARING,
    GATEWAY_REJECTED,
    GATEWAY_UNKNOWN_OUTCOME,
    HOLD_FUNDS,
    POST_HOLD,
    POSTED,
    RECORD_PAYMENT,
    RECORD_REFUND,
    RECORD_REFUND_OUTCOME,
    REFUND_CHARGE,
    SCORE_PAYMENT,
    SEND_PAYOUT,
    VOID_HOLD,
    ChargeInput,
    GatewayResult,
    HoldInput,
    PaymentInput,
    PaymentRecord,
    PaymentState,
    PayoutInput,
    RefundChargeInput,
    RefundInput,
    RefundOutcome,
    RefundRecord,
    ResolveHoldInput,
    RiskSummary,
    ScoreInput,
    platform_account_id,
)
from models.review import (
    NOTIFY_SUPERVISORS,
    RECORD_REVIEW_EVENT,
    Actor,
    EscalationNotice,
    ReviewEvent,
)
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow
from workflows.review import ComplianceReviewWorkflow

CUSTOMER = "sub-alice"
CLIENT_ID = "app-shop"
CAROL = Actor(subject="sub-carol", username="carol", roles=["compliance_officer"])
CORA = Actor(subject="sub-cora", username="cora", roles=["compliance_officer"])
CLEARING_EUR = platform_account_id(GATEWAY_CLEARING, "EUR")
WALLET = "acc_wallet_alice_eur"
OTHER_WALLET = "acc_wallet_bob_eur"
BANK = "ba_bfc_ok"
CARD = "pm_card_visa"

STATUS = SearchAttributeKey.for_keyword("PaymentStatus")

APPROVE = RiskSummary(band="approve", score=0.05, reasons=[], model_version="test-1")
REVIEW = RiskSummary(
    band="review", score=0.6, reasons=["amount_over_review_threshold"], model_version="test-1"
)
DECLINE = RiskSummary(band="decline", score=0.97, reasons=["velocity"], model_version="test-1")


# ---- the ledger ------------------------------------------------------------------------


@dataclass
class Hold:
    id: str
    debit: str
    credit: str
    amount: int
    state: Literal["pending", "posted", "voided"] = "pending"
    timeout_seconds: int | None = None


def _is_platform(account_id: str) -> bool:
    # Platform accounts (the gateway clearing account) have no limit in the real ledger.
    return account_id.startswith("acc_platform_")


def ledger_refusal(code: str, detail: str = "") -> ApplicationError:
    """A ledger rule, raised as activities/payment.py does: non-retryable, typed by the
    rule's class name (models.errors.LEDGER_ERRORS)."""
    exc = LEDGER_ERRORS[code](detail or None)
    return ApplicationError(exc.detail, type=type(exc).__name__, non_retryable=True)


class FakeLedger:
    def __init__(self) -> None:
        self.balances: defaultdict[str, int] = defaultdict(int)
        self.holds: dict[str, Hold] = {}
        # Only what changed the ledger, in order: ("hold" | "post" | "void", transfer id).
        self.log: list[tuple[str, str]] = []
        self._resolutions: dict[str, str] = {}  # post/void transfer id -> hold id

    def fund(self, account_id: str, amount: int) -> None:
        self.balances[account_id] += amount

    def available(self, account_id: str) -> int:
        pending = sum(
            h.amount for h in self.holds.values() if h.debit == account_id and h.state == "pending"
        )
        return self.balances[account_id] - pending

    def hold(self, request: HoldInput) -> str:
        if request.transfer_id in self.holds:
            return request.transfer_id
        if not _is_platform(request.debit_account_id) and (
            self.available(request.debit_account_id) < request.amount
        ):
            raise ledger_refusal("insufficient_funds")
        self.holds[request.transfer_id] = Hold(
            request.transfer_id,
            request.debit_account_id,
            request.credit_account_id,
            request.amount,
            timeout_seconds=request.timeout_seconds,
        )
        self.log.append(("hold", request.transfer_id))
        return request.transfer_id

    def _resolve(self, request: ResolveHoldInput, to: Literal["posted", "voided"]) -> str | None:
        if self._resolutions.get(request.transfer_id) == request.hold_id:
            return request.transfer_id  # the same step again: its first answer
        hold = self.holds.get(request.hold_id)
        if hold is None:
            if to == "voided":  # as void_hold: a hold that never landed needs no release
                return None
            raise ledger_refusal("pending_transfer_not_found", request.hold_id)
        if hold.state != "pending":
            if to == "voided":
                # as void_hold: a posted hold says so, anything else has nothing to release
                posted = request.post_id is not None and request.post_id in self._resolutions
                return POSTED if hold.state == "posted" and posted else None
            raise ledger_refusal("pending_transfer_already_resolved", request.hold_id)
        hold.state = to
        if to == "posted":
            self.balances[hold.debit] -= hold.amount
            self.balances[hold.credit] += hold.amount
        self._resolutions[request.transfer_id] = request.hold_id
        self.log.append(("post" if to == "posted" else "void", request.transfer_id))
        return request.transfer_id

    def post(self, request: ResolveHoldInput) -> str:
        posted = self._resolve(request, "posted")
        assert posted is not None
        return posted

    def void(self, request: ResolveHoldInput) -> str | None:
        return self._resolve(request, "voided")


# ---- the card gateway ----------------------------------------------------------------

# What the next charge/payout call does:
#   "succeed"            applied, answered
#   "decline:<code>"     applied as declined, answered
#   "error"              nothing applied, a plain (retryable) exception
#   "unknown"            nothing applied, but the answer is lost (GatewayUnknownOutcome)
#   "unknown+succeed"    applied, answer lost
#   "unknown+decline:<code>"  applied as declined, answer lost
#   "pending"            applied, answered in transit (a payout); the first lookup still
#                        finds it pending, the next one paid
Step = str


@dataclass
class Movement:
    """One charge or payout the gateway holds, under the key that created it."""

    reference: str
    payment_id: str
    idempotency_key: str
    amount: int
    outcome: Literal["succeeded", "declined", "pending"]
    decline_code: str | None = None
    lookups: int = 0

    def result(self) -> GatewayResult:
        return GatewayResult(self.outcome, self.reference, self.decline_code)


@dataclass
class GatewayRefund:
    reference: str
    charge_reference: str
    idempotency_key: str
    amount: int


class FakeGateway:
    def __init__(self) -> None:
        self.script: list[Step] = []  # consumed by charge/payout calls; then "succeed"
        self.refund_script: list[Step] = []  # "succeed" | "decline:<code>" | "reject"
        self.movements: dict[str, Movement] = {}  # by idempotency key
        self.refunds: dict[str, GatewayRefund] = {}  # by idempotency key
        # Every call that reached the gateway, in order: (operation, key or payment id).
        self.calls: list[tuple[str, str]] = []
        # How many lookups fail next, refused by the gateway (GatewayRejected).
        self.failing_lookups = 0
        # When set, money-moving calls wait here: the test decides when they answer.
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    @property
    def applied(self) -> list[Movement]:
        return list(self.movements.values())

    async def move(self, op: str, payment_id: str, key: str, amount: int) -> GatewayResult:
        self.calls.append((op, key))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if key in self.movements:  # the gateway applies a key once
            return self.movements[key].result()
        step = self.script.pop(0) if self.script else "succeed"
        lost = step.startswith("unknown")
        step = step.removeprefix("unknown").removeprefix("+")
        if step == "error":
            raise RuntimeError("gateway answered 503")
        if step == "pending":
            self.movements[key] = Movement(
                f"po_{len(self.movements) + 1}", payment_id, key, amount, "pending"
            )
        elif step:
            outcome: Literal["succeeded", "declined"] = (
                "succeeded" if step == "succeed" else "declined"
            )
            code = step.partition(":")[2] or None
            prefix = "ch" if op == "charge" else "po"
            self.movements[key] = Movement(
                f"{prefix}_{len(self.movements) + 1}", payment_id, key, amount, outcome, code
            )
        if lost:
            raise ApplicationError(
                "read timeout after sending", type=GATEWAY_UNKNOWN_OUTCOME, non_retryable=True
            )
        return self.movements[key].result()

    def find(self, op: str, payment_id: str) -> GatewayResult:
        self.calls.append((f"find_{op}", payment_id))
        if self.failing_lookups > 0:
            self.failing_lookups -= 1
            raise ApplicationError("404 no such route", type="GatewayRejected", non_retryable=True)
        for movement in self.movements.values():
            if movement.payment_id == payment_id:
                movement.lookups += 1
                if movement.outcome == "pending" and movement.lookups > 1:
                    movement.outcome = "succeeded"  # the bank paid it
                return movement.result()
        return GatewayResult("absent")

    def refund(self, request: RefundChargeInput) -> GatewayResult:
        self.calls.append(("refund", request.idempotency_key))
        if request.idempotency_key not in self.refunds:
            step = self.refund_script.pop(0) if self.refund_script else "succeed"
            if step == "reject":  # e.g. 400: more than the charge has left to refund
                raise ApplicationError(
                    "refund amount exceeds the charge", type=GATEWAY_REJECTED, non_retryable=True
                )
            if step.startswith("decline"):
                return GatewayResult("declined", decline_code=step.partition(":")[2] or None)
            self.refunds[request.idempotency_key] = GatewayRefund(
                f"re_{len(self.refunds) + 1}",
                request.gateway_reference,
                request.idempotency_key,
                request.amount,
            )
        return GatewayResult("succeeded", self.refunds[request.idempotency_key].reference)


# ---- the world: fakes bound to one test's ledger and gateway ----------------------------


@dataclass
class World:
    client: Client
    queue: str = field(default_factory=lambda: f"payments-{uuid.uuid4()}")
    risk: RiskSummary = APPROVE
    ledger: FakeLedger = field(default_factory=FakeLedger)
    gateway: FakeGateway = field(default_factory=FakeGateway)
    # post_hold's next answers: "ok", "error" (a plain exception, for ever after),
    # "error_once", "lost" (it lands, every answer about it is lost), "lost_once", or the
    # code of a ledger rule that refuses it.
    post_script: list[str] = field(default_factory=list)
    # hold_funds' next answers: "ok", "error" (never lands, for ever after) or "lost" (it
    # lands, every answer about it is lost).
    hold_script: list[str] = field(default_factory=list)
    post_attempts: int = 0
    # When set, hold_funds waits here (the saga sits inside a local activity).
    hold_gate: asyncio.Event | None = None
    hold_entered: asyncio.Event = field(default_factory=asyncio.Event)
    records: list[PaymentRecord] = field(default_factory=list)
    refund_records: list[RefundRecord] = field(default_factory=list)
    # What record_refund answers from: the captured amount per payment, each refund's amount.
    captured: dict[str, int] = field(default_factory=dict)
    refunds_by_id: dict[str, int] = field(default_factory=dict)
    review_events: list[ReviewEvent] = field(default_factory=list)
    # When set, a review decision's audit line waits here (the case is deciding).
    decision_record_gate: asyncio.Event | None = None
    decision_record_entered: asyncio.Event = field(default_factory=asyncio.Event)
    notices: list[EscalationNotice] = field(default_factory=list)
    # Announcements: every event recorded, and the app's webhook endpoints that hear of it.
    events: list[PlatformEvent] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=lambda: ["we_shop"])
    mailed: list[str] = field(default_factory=list)  # event ids
    # When set, every attempt to mail fails as a relay that is down would.
    mail_down: bool = False
    mail_attempts: int = 0

    # ---- activities, replaced by name --------------------------------------------------

    @activity.defn(name=SCORE_PAYMENT)
    async def score_payment(self, request: ScoreInput) -> RiskSummary:
        return self.risk

    @activity.defn(name=HOLD_FUNDS)
    async def hold_funds(self, request: HoldInput) -> str:
        self.hold_entered.set()
        if self.hold_gate is not None:
            await self.hold_gate.wait()
        step = self.hold_script[0] if self.hold_script else "ok"
        if step == "error":
            raise ConnectionError("ledger database unreachable")
        if step == "lost":
            self.ledger.hold(request)
            raise ConnectionError("connection reset after commit")
        return self.ledger.hold(request)

    @activity.defn(name=POST_HOLD)
    async def post_hold(self, request: ResolveHoldInput) -> str:
        self.post_attempts += 1
        step = self.post_script.pop(0) if self.post_script else "ok"
        if step.startswith("error"):
            if step == "error":
                self.post_script.insert(0, "error")  # keeps failing
            raise ConnectionError("ledger database unreachable")
        if step.startswith("lost"):  # the post lands, the answer about it is lost
            if step == "lost":
                self.post_script.insert(0, "lost")  # every answer
            if request.transfer_id not in self.ledger._resolutions:
                self.ledger.post(request)
            raise ConnectionError("connection reset after commit")
        if step != "ok":
            raise ledger_refusal(step)
        return self.ledger.post(request)

    @activity.defn(name=VOID_HOLD)
    async def void_hold(self, request: ResolveHoldInput) -> str | None:
        return self.ledger.void(request)

    @activity.defn(name=CHARGE_CARD)
    async def charge_card(self, request: ChargeInput) -> GatewayResult:
        return await self.gateway.move(
            "charge", request.payment_id, request.idempotency_key, request.amount
        )

    @activity.defn(name=SEND_PAYOUT)
    async def send_payout(self, request: PayoutInput) -> GatewayResult:
        return await self.gateway.move(
            "payout", request.payment_id, request.idempotency_key, request.amount
        )

    @activity.defn(name=FIND_CHARGE)
    async def find_charge(self, payment_id: str) -> GatewayResult:
        return self.gateway.find("charge", payment_id)

    @activity.defn(name=FIND_PAYOUT)
    async def find_payout(self, payment_id: str) -> GatewayResult:
        return self.gateway.find("payout", payment_id)

    @activity.defn(name=REFUND_CHARGE)
    async def refund_charge(self, request: RefundChargeInput) -> GatewayResult:
        return self.gateway.refund(request)

    @activity.defn(name=RECORD_PAYMENT)
    async def record_payment(self, record: PaymentRecord) -> RecordedEvent | None:
        self.records.append(record)
        return None if record.event is None else await self.record_event(record.event)

    @activity.defn(name=RECORD_REFUND)
    async def record_refund(self, record: RefundRecord) -> str:
        self.refund_records.append(record)
        refunded = sum(
            self.refunds_by_id[r.refund_id]
            for r in self.refund_records
            if r.payment_id == record.payment_id and r.status == "succeeded"
        )
        if refunded == 0:
            return "succeeded"
        return "refunded" if refunded >= self.captured[record.payment_id] else "partially_refunded"

    @activity.defn(name=RECORD_REFUND_OUTCOME)
    async def record_refund_outcome(self, record: RefundRecord) -> RefundOutcome:
        status = await self.record_refund(record)
        refunded = sum(
            self.refunds_by_id[r.refund_id]
            for r in self.refund_records
            if r.payment_id == record.payment_id and r.status == "succeeded"
        )
        return RefundOutcome(status, self.captured[record.payment_id], refunded)

    @activity.defn(name=RECORD_EVENT)
    async def record_event(self, event: PlatformEvent) -> RecordedEvent:
        if event.id not in {e.id for e in self.events}:
            self.events.append(event)
        return RecordedEvent(event.id, list(self.endpoints))

    @activity.defn(name=EMAIL_CUSTOMER)
    async def email_customer(self, event: PlatformEvent) -> EmailOutcome:
        self.mail_attempts += 1
        if self.mail_down:
            raise ApplicationError("connection refused by the mail relay", type="MailFailed")
        self.mailed.append(event.id)
        return EmailOutcome("sent")

    @activity.defn(name=RECORD_REVIEW_EVENT)
    async def record_review_event(self, event: ReviewEvent) -> None:
        decision = event.action in {"review.approved", "review.rejected"}
        if decision and self.decision_record_gate is not None:
            self.decision_record_entered.set()
            await self.decision_record_gate.wait()
        self.review_events.append(event)

    @activity.defn(name=NOTIFY_SUPERVISORS)
    async def notify_supervisors(self, notice: EscalationNotice) -> None:
        self.notices.append(notice)

    def activities(self) -> list[Any]:
        return [
            self.score_payment,
            self.hold_funds,
            self.post_hold,
            self.void_hold,
            self.charge_card,
            self.send_payout,
            self.find_charge,
            self.find_payout,
            self.refund_charge,
            self.record_payment,
            self.record_refund,
            self.record_refund_outcome,
            self.record_event,
            self.email_customer,
            self.record_review_event,
            self.notify_supervisors,
        ]

    def worker(self, *, workflows: list[type] | None = None) -> Worker:
        return Worker(
            self.client,
            task_queue=self.queue,
            workflows=workflows
            or [PaymentWorkflow, RefundWorkflow, ComplianceReviewWorkflow, EventDeliveryStandIn],
            activities=self.activities(),
        )

    # ---- starting and watching the sagas -----------------------------------------------

    async def start(
        self, payment: PaymentInput, **options: Any
    ) -> WorkflowHandle[PaymentWorkflow, Any]:
        return await self.client.start_workflow(
            PaymentWorkflow.run,
            payment,
            id=payment.payment_id,
            task_queue=self.queue,
            search_attributes=search_attributes("processing", payment.kind, payment.amount),
            **options,
        )

    async def start_refund(self, refund: RefundInput) -> WorkflowHandle[RefundWorkflow, Any]:
        self.refunds_by_id[refund.refund_id] = refund.amount
        return await self.client.start_workflow(
            RefundWorkflow.run,
            refund,
            id=refund.refund_id,
            task_queue=self.queue,
            search_attributes=search_attributes("succeeded", "refund", refund.amount),
        )

    async def announced(self, handle: WorkflowHandle[Any, Any]) -> list[PlatformEvent]:
        """The events the saga announced (recorded by ``record_event``), after checking that
        each was mailed and handed, once, to EventDeliveryWorkflow for the app's webhooks."""
        handed = await self.handed_to_delivery(handle)
        recorded = [(e.id, e.type) for e in self.events]
        if self.endpoints:
            assert [(e.id, e.type) for e in handed] == recorded
        assert self.mailed == [e.id for e in self.events if e.customer_id is not None]
        return list(self.events)

    async def handed_to_delivery(self, handle: WorkflowHandle[Any, Any]) -> list[PlatformEvent]:
        """The events the saga started an EventDeliveryWorkflow (the stand-in) with."""
        handed = []
        async for e in handle.fetch_history_events():
            if e.event_type != EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
                continue
            attrs = e.start_child_workflow_execution_initiated_event_attributes
            if attrs.workflow_type.name == EVENT_DELIVERY_WORKFLOW:
                child = self.client.get_workflow_handle(
                    attrs.workflow_id, result_type=PlatformEvent
                )
                handed.append(await child.result())
        return handed

    async def status_attribute(self, handle: WorkflowHandle[Any, Any]) -> str | None:
        return (await handle.describe()).typed_search_attributes.get(STATUS)


def search_attributes(status: str, kind: str, amount: int) -> TypedSearchAttributes:
    """What the API sets at start (api/routes/payments.py)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(STATUS, status),
            SearchAttributePair(SearchAttributeKey.for_keyword("PaymentKind"), kind),
            SearchAttributePair(SearchAttributeKey.for_keyword("CustomerId"), CUSTOMER),
            SearchAttributePair(SearchAttributeKey.for_int("AmountMinor"), amount),
            SearchAttributePair(SearchAttributeKey.for_keyword("Currency"), "EUR"),
        ]
    )


async def waiting_for(
    handle: WorkflowHandle[PaymentWorkflow, Any], prefix: str, *, seconds: float = 10
) -> PaymentState:
    """Poll ``get_payment`` until the saga says it waits for ``prefix…``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        state: PaymentState = await handle.query(PaymentWorkflow.get_payment)
        if state.waiting_for.startswith(prefix):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still waiting for {state.waiting_for!r}, not {prefix!r}")
        await asyncio.sleep(0.02)


# ---- inputs ----------------------------------------------------------------------------


def new_payment_id() -> str:
    return f"pay_{uuid.uuid4().hex}"


def topup(amount: int = 5_000, **changes: Any) -> PaymentInput:
    p = PaymentInput(
        payment_id=new_payment_id(),
        kind="topup",
        customer_id=CUSTOMER,
        client_id=CLIENT_ID,
        amount=amount,
        currency="EUR",
        destination_account_id=WALLET,
        payment_method=CARD,
    )
    return replace(p, **changes)


def transfer(amount: int = 5_000, **changes: Any) -> PaymentInput:
    p = PaymentInput(
        payment_id=new_payment_id(),
        kind="transfer",
        customer_id=CUSTOMER,
        client_id=CLIENT_ID,
        amount=amount,
        currency="EUR",
        source_account_id=WALLET,
        destination_account_id=OTHER_WALLET,
    )
    return replace(p, **changes)


def payout(amount: int = 5_000, **changes: Any) -> PaymentInput:
    p = PaymentInput(
        payment_id=new_payment_id(),
        kind="payout",
        customer_id=CUSTOMER,
        client_id=CLIENT_ID,
        amount=amount,
        currency="EUR",
        source_account_id=WALLET,
        payout_destination=BANK,
    )
    return replace(p, **changes)


# Unsandboxed: it does nothing a sandbox would catch, and the sandbox would re-import this
# whole module (fakes, settings) for every run.
@workflow.defn(name=EVENT_DELIVERY_WORKFLOW, sandboxed=False)
class EventDeliveryStandIn:
    """Takes the place of EventDeliveryWorkflow: returns the event it was started with."""

    @workflow.run
    async def run(self, event: PlatformEvent) -> PlatformEvent:
        return event
