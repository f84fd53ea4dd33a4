"""OnboardingWorkflow on the time-skipping test server: the documents wait (reminders,
expiry), the KYC provider's callback and polling, each verdict's path, review and cancel.

The outside world is ``Applicants``: every activity the saga schedules by name, faked and
recording what it was asked (with the test server's clock, so reminder times can be
checked). Review paths run the real ComplianceReviewWorkflow as the child and decide it
through its Updates, as officers do through the API.

One full review-path history is kept in ``histories/onboarding_review.json`` and replayed
against today's code; to record it again after an intended change::

    BFC_RECORD_HISTORIES=1 .venv/bin/pytest tests/workflows/test_onboarding.py -k history
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from infra.temporal import platform_data_converter
from models.onboarding import (
    ACTIVATE_CUSTOMER,
    CREATE_APPLICANT_USER,
    EMAIL_TAKEN,
    GET_KYC_VERIFICATION,
    NOTIFY_APPLICANT,
    RECORD_ONBOARDING,
    SCREEN_APPLICANT,
    START_KYC_CHECK,
    ActivateInput,
    Activation,
    ApplicantNotice,
    ApplicantRef,
    CancelApplication,
    DocumentsSubmitted,
    KycCheckStarted,
    KycVerdictSignal,
    OnboardingInput,
    OnboardingPolicy,
    OnboardingRecord,
    OnboardingState,
    ScreeningSummary,
    review_id_for,
)
from models.review import (
    NOTIFY_SUPERVISORS,
    RECORD_REVIEW_EVENT,
    Actor,
    DecideInput,
    EscalationNotice,
    ReviewEvent,
    ReviewState,
)
from workflows.onboarding import OnboardingWorkflow
from workflows.review import ComplianceReviewWorkflow

CAROL = Actor(subject="sub-carol", username="carol", roles=["compliance_officer"])
CORA = Actor(subject="sub-cora", username="cora", roles=["compliance_officer"])
OLIVIA = "sub-olivia"  # an operator

DAY = timedelta(days=1)
HISTORY = Path(__file__).parent / "histories" / "onboarding_review.json"

STATUS = SearchAttributeKey.for_keyword("OnboardingStatus")
RISK_TIER = SearchAttributeKey.for_keyword("RiskTier")

CLEAN = ScreeningSummary(
    possible_match=False,
    best_score=41.0,
    threshold=88.0,
    algorithm="rapidfuzz.token_sort_ratio",
    list_version="fixture-2025-01",
)
LISTED = ScreeningSummary(
    possible_match=True,
    best_score=93.5,
    threshold=88.0,
    algorithm="rapidfuzz.token_sort_ratio",
    list_version="fixture-2025-01",
    entry_id="NK-fixture-007",
    entry_name="Ivan Fictivenko",
    topics=["sanction"],
    birth_date_match=True,
)

Handle = WorkflowHandle[OnboardingWorkflow, OnboardingState]


def pending(verification_id: str) -> KycCheckStarted:
    return KycCheckStarted(verification_id=verification_id, status="pending")


def completed(verification_id: str, verdict: str) -> KycCheckStarted:
    return KycCheckStarted(verification_id=verification_id, status="completed", verdict=verdict)


@dataclass
class Applicants:
    """The world one test's applications meet: identity directory, KYC provider,
    screening, ledger, mail, the applications table and the review's audit trail."""

    env: WorkflowEnvironment
    queue: str = field(default_factory=lambda: f"onboarding-{uuid.uuid4()}")
    # What start_kyc_check answers (the verification id is derived from the application),
    # or the ApplicationError type it fails with.
    kyc_start: str = "pending"  # pending | <verdict> (completed at once) | error:<Type>
    # What each poll answers, in order; then "pending".
    poll_script: list[str] = field(default_factory=list)
    screening: ScreeningSummary = CLEAN
    # When set, create_applicant_user refuses: another user has the applicant's email.
    email_taken: bool = False
    # When set, the review's audit record of an approval waits here (the case is decided,
    # its update handler not finished).
    approval_record_gate: asyncio.Event | None = None
    approval_record_entered: asyncio.Event = field(default_factory=asyncio.Event)
    # When set, activate_customer waits here (the saga sits in the activation).
    activation_gate: asyncio.Event | None = None
    activation_entered: asyncio.Event = field(default_factory=asyncio.Event)

    users: list[ApplicantRef] = field(default_factory=list)
    kyc_starts: list[ApplicantRef] = field(default_factory=list)
    polls: list[tuple[str, datetime]] = field(default_factory=list)
    screened: list[ApplicantRef] = field(default_factory=list)
    activations: list[ActivateInput] = field(default_factory=list)
    notices: list[tuple[ApplicantNotice, datetime]] = field(default_factory=list)
    records: list[OnboardingRecord] = field(default_factory=list)
    review_events: list[ReviewEvent] = field(default_factory=list)

    @staticmethod
    def user_id(customer_id: str) -> str:
        return f"kc-{customer_id}"

    @staticmethod
    def verification_id(onboarding_id: str) -> str:
        return "ver_" + onboarding_id.removeprefix("onb_")

    # ---- activities, replaced by name --------------------------------------------------

    @activity.defn(name=CREATE_APPLICANT_USER)
    async def create_applicant_user(self, ref: ApplicantRef) -> str:
        if self.email_taken:
            raise ApplicationError("the address belongs to user kc-other", type=EMAIL_TAKEN,
                                   non_retryable=True)  # fmt: skip
        self.users.append(ref)
        return self.user_id(ref.customer_id)

    @activity.defn(name=START_KYC_CHECK)
    async def start_kyc_check(self, ref: ApplicantRef) -> KycCheckStarted:
        self.kyc_starts.append(ref)
        vid = self.verification_id(ref.onboarding_id)
        if self.kyc_start.startswith("error:"):
            raise ApplicationError(
                "the provider refused the request",
                type=self.kyc_start.removeprefix("error:"),
                non_retryable=True,
            )
        return pending(vid) if self.kyc_start == "pending" else completed(vid, self.kyc_start)

    @activity.defn(name=GET_KYC_VERIFICATION)
    async def get_kyc_verification(self, verification_id: str) -> KycCheckStarted:
        self.polls.append((verification_id, await self.env.get_current_time()))
        answer = self.poll_script.pop(0) if self.poll_script else "pending"
        if answer == "pending":
            return pending(verification_id)
        return completed(verification_id, answer)

    @activity.defn(name=SCREEN_APPLICANT)
    async def screen_applicant(self, ref: ApplicantRef) -> ScreeningSummary:
        self.screened.append(ref)
        return self.screening

    @activity.defn(name=ACTIVATE_CUSTOMER)
    async def activate_customer(self, request: ActivateInput) -> Activation:
        self.activation_entered.set()
        if self.activation_gate is not None:
            await self.activation_gate.wait()
        self.activations.append(request)
        return Activation(
            user_id=request.user_id,
            wallet_account_id=f"acc_wallet_{request.user_id}_{request.currency.lower()}",
            password_email_sent=True,
        )

    @activity.defn(name=NOTIFY_APPLICANT)
    async def notify_applicant(self, notice: ApplicantNotice) -> None:
        self.notices.append((notice, await self.env.get_current_time()))

    @activity.defn(name=RECORD_ONBOARDING)
    async def record_onboarding(self, record: OnboardingRecord) -> None:
        self.records.append(record)

    @activity.defn(name=RECORD_REVIEW_EVENT)
    async def record_review_event(self, event: ReviewEvent) -> None:
        if self.approval_record_gate is not None and event.action == "review.approved":
            self.approval_record_entered.set()
            await self.approval_record_gate.wait()
        self.review_events.append(event)

    @activity.defn(name=NOTIFY_SUPERVISORS)
    async def notify_supervisors(self, notice: EscalationNotice) -> None:
        pass

    def worker(self) -> Worker:
        return Worker(
            self.env.client,
            task_queue=self.queue,
            workflows=[OnboardingWorkflow, ComplianceReviewWorkflow],
            activities=[
                self.create_applicant_user,
                self.start_kyc_check,
                self.get_kyc_verification,
                self.screen_applicant,
                self.activate_customer,
                self.notify_applicant,
                self.record_onboarding,
                self.record_review_event,
                self.notify_supervisors,
            ],
        )

    # ---- driving and watching an application ------------------------------------------

    async def apply(self, application: OnboardingInput) -> tuple[Handle, datetime]:
        """Start the workflow; also the test server's time at the application."""
        at = await self.env.get_current_time()
        handle = await self.env.client.start_workflow(
            OnboardingWorkflow.run,
            application,
            id=application.onboarding_id,
            task_queue=self.queue,
        )
        return handle, at

    def kinds(self) -> list[tuple[str, int]]:
        return [(n.kind, n.sequence) for n, _ in self.notices]

    def statuses(self) -> list[str]:
        """The status path the applications table saw (each change once, in order)."""
        path: list[str] = []
        for record in self.records:
            if not path or path[-1] != record.status:
                path.append(record.status)
        return path

    def review(self, application: OnboardingInput) -> WorkflowHandle[ComplianceReviewWorkflow, Any]:
        return self.env.client.get_workflow_handle_for(
            ComplianceReviewWorkflow.run, review_id_for(application.onboarding_id)
        )

    async def case(self, application: OnboardingInput) -> ReviewState:
        state: ReviewState = await self.review(application).query(ComplianceReviewWorkflow.get_case)
        return state


@pytest.fixture
async def world(workflow_env: WorkflowEnvironment) -> AsyncIterator[Applicants]:
    w = Applicants(workflow_env)
    async with w.worker():
        yield w


def application(*, documents: bool = True, country: str = "SE", **changes: Any) -> OnboardingInput:
    suffix = uuid.uuid4().hex[:26]
    a = OnboardingInput(
        onboarding_id=f"onb_{suffix}",
        customer_id=f"cus_{suffix}",
        client_id="bfc-app",
        country=country,
        currency="EUR",
        documents_provided=documents,
    )
    return replace(a, **changes)


async def waiting_for(handle: Handle, prefix: str, *, seconds: float = 10) -> OnboardingState:
    """Poll ``get_application`` until the application says it waits for ``prefix…``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        state: OnboardingState = await handle.query(OnboardingWorkflow.get_application)
        if state.waiting_for.startswith(prefix):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still waiting for {state.waiting_for!r}, not {prefix!r}")
        await asyncio.sleep(0.02)


async def finished(world: Applicants, handle: Handle) -> OnboardingState:
    """Wait for the end; the result, the query and the last record must agree."""
    result = await handle.result()
    state: OnboardingState = await handle.query(OnboardingWorkflow.get_application)
    assert (result.status, result.decision_reason) == (state.status, state.decision_reason)
    last = world.records[-1]
    assert (last.status, last.decision_reason, last.risk_tier) == (
        state.status,
        state.decision_reason,
        state.risk_tier,
    )
    assert state.waiting_for == ""
    return state


async def attributes(handle: Handle) -> tuple[str | None, str | None]:
    described = (await handle.describe()).typed_search_attributes
    return described.get(STATUS), described.get(RISK_TIER)


def near(actual: datetime, expected: datetime) -> bool:
    # The test server skips to each timer exactly; a minute covers the real time the test
    # itself spends between steps.
    return abs(actual - expected) < timedelta(minutes=1)


def children_started(history: WorkflowHistory) -> list[str]:
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]


# ---- missing documents: reminders and expiry ---------------------------------------------


async def test_reminders_at_one_and_three_days_then_expiry_at_seven(world: Applicants) -> None:
    a = application(documents=False)
    handle, applied = await world.apply(a)
    state = await finished(world, handle)

    assert (state.status, state.decision_reason) == ("expired", "documents_not_received")
    assert world.kinds() == [("reminder", 1), ("reminder", 2), ("expired", 0)]
    times = [at for _, at in world.notices]
    assert near(times[0], applied + 1 * DAY), times[0] - applied
    assert near(times[1], applied + 3 * DAY), times[1] - applied
    assert near(times[2], applied + 7 * DAY), times[2] - applied
    assert all(n.onboarding_id == a.onboarding_id for n, _ in world.notices)
    # Nothing happened beyond the wait: no user, no check, nothing activated.
    assert (world.users, world.kyc_starts, world.activations) == ([], [], [])
    assert world.statuses() == ["received", "awaiting_documents", "expired"]
    assert world.records[1].missing == ["document"]
    assert state.reminders_sent == 2
    assert await attributes(handle) == ("expired", None)


async def test_documents_on_day_two_stop_the_reminders_and_the_check_goes_on(
    workflow_env: WorkflowEnvironment, world: Applicants
) -> None:
    world.kyc_start = "clear"
    a = application(documents=False)
    handle, applied = await world.apply(a)
    await workflow_env.sleep(2 * DAY)
    waiting = await waiting_for(handle, "documents")
    assert (waiting.status, waiting.missing, waiting.reminders_sent) == (
        "awaiting_documents",
        ["document"],
        1,
    )
    await handle.signal(OnboardingWorkflow.documents_submitted, DocumentsSubmitted("passport"))
    state = await finished(world, handle)

    assert world.kinds() == [("reminder", 1), ("welcome", 0)]  # the day-3 reminder never came
    assert near(world.notices[0][1], applied + DAY)
    assert state.status == "approved"
    assert [u.onboarding_id for u in world.users] == [a.onboarding_id]
    assert [k.onboarding_id for k in world.kyc_starts] == [a.onboarding_id]
    assert world.statuses() == [
        "received",
        "awaiting_documents",
        "verifying",
        "screening",
        "approved",
    ]
    assert world.records[-1].missing == []


async def test_resend_reminder_sends_the_next_one_while_documents_are_missing(
    workflow_env: WorkflowEnvironment, world: Applicants
) -> None:
    a = application(documents=False)
    handle, applied = await world.apply(a)
    await waiting_for(handle, "documents")
    await handle.signal(OnboardingWorkflow.resend_reminder)
    await waiting_for(handle, "documents (1 reminders sent")
    assert world.kinds() == [("reminder", 1)]
    assert near(world.notices[0][1], applied)  # right away, not at the first timer

    await workflow_env.sleep(DAY + timedelta(hours=1))  # the first timer: the next number
    await waiting_for(handle, "documents (2 reminders sent")
    assert world.kinds() == [("reminder", 1), ("reminder", 2)]
    assert near(world.notices[1][1], applied + DAY)

    await handle.signal(OnboardingWorkflow.documents_submitted, DocumentsSubmitted("passport"))
    await waiting_for(handle, "the KYC provider's callback")
    await handle.signal(OnboardingWorkflow.resend_reminder)  # documents are in: ignored
    await handle.signal(
        OnboardingWorkflow.kyc_verdict,
        KycVerdictSignal(world.verification_id(a.onboarding_id), "clear"),
    )
    state = await finished(world, handle)
    assert state.status == "approved"
    assert state.reminders_sent == 2
    assert world.kinds() == [("reminder", 1), ("reminder", 2), ("welcome", 0)]


async def test_cancel_while_documents_are_missing(world: Applicants) -> None:
    a = application(documents=False)
    handle, _ = await world.apply(a)
    await waiting_for(handle, "documents")
    await handle.signal(OnboardingWorkflow.cancel, CancelApplication(OLIVIA, "applicant asked"))
    state = await finished(world, handle)
    assert (state.status, state.decision_reason) == ("canceled", "canceled")
    assert world.kinds() == [("canceled", 0)]
    assert (world.users, world.activations) == ([], [])


# ---- the KYC provider: callback, silence, polling ----------------------------------------


async def test_an_email_another_user_has_ends_the_application_rejected(
    world: Applicants,
) -> None:
    """Keycloak refuses a second user with one address (an earlier application of the same
    person): the application ends, recorded and the applicant told, not failed half-open."""
    world.email_taken = True
    handle, _ = await world.apply(application())
    state = await finished(world, handle)
    assert (state.status, state.decision_reason) == ("rejected", "email_in_use")
    assert world.users == [] and world.kyc_starts == [] and world.activations == []
    assert world.kinds() == [("rejected", 0)]
    assert world.statuses() == ["received", "rejected"]
    assert await attributes(handle) == ("rejected", None)


async def test_provider_silence_polls_then_goes_to_review(world: Applicants) -> None:
    policy = OnboardingPolicy()
    a = application()
    handle, applied = await world.apply(a)
    state = await finished(world, handle)  # time skips through the polls and the case's SLA

    vid = world.verification_id(a.onboarding_id)
    assert [v for v, _ in world.polls] == [vid] * policy.kyc_poll_attempts
    # Wait for the callback, then one poll per interval. (Relative to the first poll: the
    # start of the check is a few real milliseconds after the application.)
    first = world.polls[0][1]
    assert near(first, applied + timedelta(seconds=policy.kyc_callback_wait_seconds))
    for number, (_, at) in enumerate(world.polls):
        assert near(at, first + number * timedelta(seconds=policy.kyc_poll_interval_seconds))

    assert (state.kyc_verdict, state.risk_tier, state.risk_reasons) == (
        None,
        "medium",
        ["kyc_no_answer"],
    )
    case = await world.case(a)
    assert [r.code for r in case.reasons] == ["kyc_no_answer"]
    assert case.reasons[0].evidence["kyc_verification_id"] == vid
    assert case.required_approvals == 1
    # Nobody decided in time: the case's default outcome.
    assert (state.status, state.decision_reason) == ("rejected", "review_expired")
    assert world.activations == []
    assert world.kinds() == [("rejected", 0)]


async def test_a_poll_that_finds_the_verdict_ends_the_polling(world: Applicants) -> None:
    world.poll_script = ["pending", "pending", "clear"]
    a = application()
    handle, _ = await world.apply(a)
    state = await finished(world, handle)

    assert len(world.polls) == 3
    assert (state.status, state.kyc_verdict, state.risk_tier) == ("approved", "clear", "low")
    assert state.review_id is None
    assert world.kinds() == [("welcome", 0)]


async def test_a_refused_kyc_request_goes_to_an_officer_not_to_rejection(
    world: Applicants,
) -> None:
    world.kyc_start = "error:KycRejected"
    a = application()
    handle, _ = await world.apply(a)
    await waiting_for(handle, "a compliance decision")
    case = await world.case(a)
    assert [r.code for r in case.reasons] == ["kyc_no_answer"]
    assert case.reasons[0].evidence["kyc_failure"] == "KycRejected"
    assert world.polls == []  # nothing to poll: the provider never took the check
    await world.review(a).execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="documents seen")
    )
    state = await finished(world, handle)
    assert (state.status, state.decision_reason) == ("approved", "review_approved")


# ---- each verdict's path -------------------------------------------------------------------


async def test_clear_clean_low_risk_country_is_approved_without_review(world: Applicants) -> None:
    world.kyc_start = "clear"
    a = application(country="SE")
    handle, _ = await world.apply(a)
    state = await finished(world, handle)

    user = world.user_id(a.customer_id)
    assert (state.status, state.decision_reason) == ("approved", "auto_approved")
    assert (state.risk_tier, state.risk_reasons, state.review_id) == ("low", [], None)
    assert world.activations == [ActivateInput(a.onboarding_id, a.customer_id, user, "EUR")]
    assert state.wallet_account_id == f"acc_wallet_{user}_eur"
    assert world.records[-1].wallet_account_id == state.wallet_account_id
    assert world.kinds() == [("welcome", 0)]
    assert world.review_events == []
    assert children_started(await handle.fetch_history()) == []
    assert world.statuses() == ["received", "verifying", "screening", "approved"]
    assert await attributes(handle) == ("approved", "low")


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [("mismatch", "kyc_data_mismatch"), ("needs_manual_check", "kyc_needs_manual_check")],
)
async def test_a_doubtful_verdict_by_callback_needs_one_officer(
    world: Applicants, verdict: str, reason: str
) -> None:
    a = application()
    handle, _ = await world.apply(a)
    await waiting_for(handle, "the KYC provider's callback")
    # A callback about another verification never decides this application.
    await handle.signal(OnboardingWorkflow.kyc_verdict, KycVerdictSignal("ver_other", "clear"))
    vid = world.verification_id(a.onboarding_id)
    checks = {"document_authentic": "pass", "data_match": "fail"}
    await handle.signal(OnboardingWorkflow.kyc_verdict, KycVerdictSignal(vid, verdict, checks))
    in_review = await waiting_for(handle, "a compliance decision")
    assert (in_review.status, in_review.kyc_verdict) == ("in_review", verdict)
    assert world.polls == []  # the callback came in time

    case = await world.case(a)
    assert (case.kind, case.subject_id, case.required_approvals) == (
        "onboarding",
        a.onboarding_id,
        1,
    )
    [why] = case.reasons
    assert why.code == reason
    assert why.evidence["risk_tier"] == "medium"
    assert (why.evidence["kyc_verdict"], why.evidence["kyc_checks"]) == (verdict, checks)
    assert why.evidence["country"] == "SE"
    assert world.activations == []  # nothing before the decision

    await world.review(a).execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="explained")
    )
    state = await finished(world, handle)
    assert (state.status, state.decision_reason, state.risk_tier) == (
        "approved",
        "review_approved",
        "medium",
    )
    assert [x.user_id for x in world.activations] == [world.user_id(a.customer_id)]
    assert world.kinds() == [("welcome", 0)]
    assert world.statuses() == ["received", "verifying", "screening", "in_review", "approved"]


async def four_eyes_case(world: Applicants) -> tuple[Handle, OnboardingInput, OnboardingState]:
    """A forged document: high risk, approved by carol and then cora."""
    world.kyc_start = "forged"
    a = application()
    handle, _ = await world.apply(a)
    await waiting_for(handle, "a compliance decision")
    case = await world.case(a)
    assert ([r.code for r in case.reasons], case.required_approvals) == (
        ["kyc_forged_document"],
        2,
    )
    review = world.review(a)
    first = await review.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="passport re-checked")
    )
    assert (first.status, first.approvals) == ("open", [CAROL.subject])
    still = await handle.query(OnboardingWorkflow.get_application)
    assert still.status == "in_review"  # one officer is not enough
    assert world.activations == []
    await review.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CORA, reason="agreed")
    )
    return handle, a, await finished(world, handle)


async def test_a_forged_document_needs_two_officers(world: Applicants) -> None:
    handle, a, state = await four_eyes_case(world)
    assert (state.status, state.decision_reason, state.risk_tier) == (
        "approved",
        "review_approved",
        "high",
    )
    outcome = await world.review(a).result()
    assert outcome.decided_by == [CAROL.subject, CORA.subject]
    assert len(world.activations) == 1
    assert world.kinds() == [("welcome", 0)]
    assert await attributes(handle) == ("approved", "high")


async def test_a_possible_sanctions_match_is_reviewed_with_the_evidence_and_rejected(
    world: Applicants,
) -> None:
    world.kyc_start = "clear"
    world.screening = LISTED
    a = application()
    handle, _ = await world.apply(a)
    await waiting_for(handle, "a compliance decision")

    case = await world.case(a)
    [why] = case.reasons
    assert why.code == "sanctions_possible_match"
    assert case.required_approvals == 2  # high risk
    expected = {
        "screening_possible_match": True,
        "screening_score": 93.5,
        "screening_threshold": 88.0,
        "screening_entry_id": "NK-fixture-007",
        "screening_entry_name": "Ivan Fictivenko",
        "screening_algorithm": "rapidfuzz.token_sort_ratio",
        "screening_list_version": "fixture-2025-01",
        "screening_topics": ["sanction"],
        "screening_birth_date_match": True,
        "kyc_verdict": "clear",
        "risk_tier": "high",
    }
    assert {key: why.evidence.get(key) for key in expected} == expected

    await world.review(a).execute_update(
        ComplianceReviewWorkflow.reject, DecideInput(actor=CAROL, reason="true match")
    )
    state = await finished(world, handle)
    assert (state.status, state.decision_reason) == ("rejected", "review_rejected")
    assert state.screening == LISTED
    assert world.records[-1].screening == LISTED  # recorded for officers and the audit
    assert world.activations == []
    assert world.kinds() == [("rejected", 0)]  # the neutral notice, nothing else
    assert await attributes(handle) == ("rejected", "high")


# ---- cancel --------------------------------------------------------------------------------


async def test_cancel_during_review_withdraws_the_case(world: Applicants) -> None:
    world.kyc_start = "mismatch"
    a = application()
    handle, _ = await world.apply(a)
    await waiting_for(handle, "a compliance decision")
    await handle.signal(OnboardingWorkflow.cancel, CancelApplication(OLIVIA, "duplicate"))
    state = await finished(world, handle)

    assert (state.status, state.decision_reason) == ("canceled", "canceled")
    with pytest.raises(WorkflowFailureError) as withdrawn:
        await world.review(a).result()
    assert isinstance(withdrawn.value.cause, CancelledError)
    assert [e.action for e in world.review_events] == ["review.opened", "review.withdrawn"]
    assert world.activations == []
    assert world.kinds() == [("canceled", 0)]
    assert await attributes(handle) == ("canceled", "medium")


async def test_a_cancel_that_reaches_a_case_just_decided_leaves_the_decision(
    world: Applicants,
) -> None:
    """The officer approves; while the approval's audit record is written, an operator
    cancels. The case was decided: the officer was told "approved", so it stands."""
    world.kyc_start = "mismatch"
    world.approval_record_gate = asyncio.Event()
    a = application()
    handle, _ = await world.apply(a)
    await waiting_for(handle, "a compliance decision")
    approving = asyncio.create_task(
        world.review(a).execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="checked")
        )
    )
    await asyncio.wait_for(world.approval_record_entered.wait(), timeout=10)
    await handle.signal(OnboardingWorkflow.cancel, CancelApplication(OLIVIA, "duplicate"))
    await asyncio.sleep(0.5)  # the cancel reaches the case while its record is written
    world.approval_record_gate.set()
    assert (await approving).status == "approved"
    state = await finished(world, handle)

    assert (state.status, state.decision_reason) == ("approved", "review_approved")
    assert len(world.activations) == 1
    actions = [e.action for e in world.review_events]
    assert "review.approved" in actions and "review.withdrawn" not in actions


async def test_cancel_after_approval_is_ignored(world: Applicants) -> None:
    world.kyc_start = "clear"
    world.activation_gate = asyncio.Event()
    a = application()
    handle, _ = await world.apply(a)
    await asyncio.wait_for(world.activation_entered.wait(), timeout=10)
    await handle.signal(OnboardingWorkflow.cancel, CancelApplication(OLIVIA, "too late"))
    # Decided: activation is under way (the status turns "approved" once it is done).
    activating = await handle.query(OnboardingWorkflow.get_application)
    assert "activation" in activating.waiting_for and activating.status != "canceled"
    world.activation_gate.set()
    state = await finished(world, handle)

    assert (state.status, state.decision_reason) == ("approved", "auto_approved")
    assert len(world.activations) == 1
    assert world.kinds() == [("welcome", 0)]


# ---- replay ----------------------------------------------------------------------------------


async def test_a_review_history_replays_and_the_recorded_one_too(world: Applicants) -> None:
    """Today's code replays a fresh review-path history and the recorded one. With
    BFC_RECORD_HISTORIES=1 the fresh one replaces the recording."""
    handle, _, _ = await four_eyes_case(world)
    fresh = await handle.fetch_history()
    if os.environ.get("BFC_RECORD_HISTORIES") == "1":
        HISTORY.write_text(fresh.to_json())
    replayer = Replayer(workflows=[OnboardingWorkflow], data_converter=platform_data_converter())
    await replayer.replay_workflow(fresh)
    recorded = WorkflowHistory.from_json(HISTORY.stem, HISTORY.read_text())
    assert children_started(recorded) == ["ComplianceReviewWorkflow"]
    await replayer.replay_workflow(recorded)
