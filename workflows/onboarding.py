"""OnboardingWorkflow (``onb_…``): one application, from receipt to a decision.

The steps, what each waits for, and where each outcome leads (the contracts and the
activities' names are in ``models/onboarding.py``)::

    1. received
       documents missing -> awaiting_documents, durable timers counted from the application:
           first_reminder_seconds   reminder 1   (notify_applicant, kind reminder)
           second_reminder_seconds  reminder 2
           expiry_seconds           -> expired, a neutral notice; nothing else happens
       signal documents_submitted ends the wait; signal resend_reminder sends the next
       reminder at once while documents are missing (ignored otherwise).
    2. create the applicant's Keycloak user, disabled. Only once the documents are in: an
       application that expires or is canceled while waiting for them leaves nothing in the
       identity directory to clean up, and the user exists before any case needs it (the
       review's own-case check is against this user id).
    3. verifying: start the KYC check. A verdict in the answer is used as it is; otherwise
       wait for the provider's callback (signal kyc_verdict; one for another verification
       is ignored) up to kyc_callback_wait_seconds, then poll: at once and then every
       kyc_poll_interval_seconds, kyc_poll_attempts polls in all (a callback arriving
       meanwhile wins). Still nothing: no verdict, which sends the application to review. A request
       the provider refuses (KycRejected) or that keeps failing also ends with no verdict:
       it goes to a compliance officer rather than rejecting the applicant for our or the
       provider's fault; the failure is part of the case's evidence.
    4. screening: sanctions/PEP lists.
    5. risk tier (``models.onboarding.risk_tier``): low with no reasons -> approved.
    6. otherwise in_review: a ComplianceReviewWorkflow child (``rev_…``) with every reason
       and its evidence; two approvals when the tier is the policy's four-eyes tier.
       approved -> approved; rejected -> rejected ``review_rejected``; the case's SLA
       expiry -> rejected ``review_expired``.
    7. approved: activate (enable the user, Keycloak mails a set-password link, open the
       wallet), then a welcome notice. rejected / expired / canceled: the user stays
       disabled, a neutral notice of that kind (never a word about screening).

``cancel`` (a signal) is honoured until the decision (approved, rejected, expired): the
application ends canceled, an open case is withdrawn (the child is canceled). After the
decision it is ignored; a case an officer decided just before the cancel reached it
answers with that decision, which then decides the application.

Every status change upserts the ``OnboardingStatus`` search attribute and writes the
application's row (record_onboarding, a local activity) with everything known so far;
``RiskTier`` is set once tiered. Current details and ``get_application`` say what the
application waits for. Nothing personal travels here: ids, codes, scores and times only.

Retries: the KYC provider is an outside party, so its calls retry generously but within a
deadline (then: no verdict, as above); our own services (Keycloak, screening, ledger) are
retried until they answer, since an application must not end for an outage of ours.
Notices are best effort: a notice that cannot be sent within its deadline is logged and
the application goes on.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from models.kyc import VERDICTS, KycRejected
    from models.onboarding import (
        ACTIVATE_CUSTOMER,
        CANCEL_SIGNAL,
        CREATE_APPLICANT_USER,
        DOCUMENTS_SUBMITTED_SIGNAL,
        EMAIL_TAKEN,
        GET_APPLICATION_QUERY,
        GET_KYC_VERIFICATION,
        KYC_VERDICT_SIGNAL,
        NOTIFY_APPLICANT,
        ONBOARDING_WORKFLOW,
        RECORD_ONBOARDING,
        RESEND_REMINDER_SIGNAL,
        SCREEN_APPLICANT,
        START_KYC_CHECK,
        TERMINAL_ONBOARDING,
        ActivateInput,
        Activation,
        ApplicantNotice,
        ApplicantRef,
        CancelApplication,
        DocumentsSubmitted,
        KycCheckStarted,
        KycVerdictSignal,
        NoticeKind,
        OnboardingInput,
        OnboardingRecord,
        OnboardingState,
        RiskTier,
        ScreeningSummary,
        review_id_for,
        risk_tier,
    )
    from models.review import REVIEW_WORKFLOW, OpenReviewInput, ReviewOutcome, ReviewReason

T = TypeVar("T")

# workflow.patched id: a review decided just before a cancel reached it decides the application.
DECISION_BEFORE_CANCEL_STANDS = "review-decision-before-cancel-stands"

STATUS = SearchAttributeKey.for_keyword("OnboardingStatus")
RISK_TIER = SearchAttributeKey.for_keyword("RiskTier")

# The activity raises a refused request as a non-retryable error named after the class.
KYC_REJECTED = KycRejected.__name__

# The provider's calls: a few seconds each, retried with backoff; starting a check gives up
# after an hour (no verdict -> review), a poll when the next one is due.
_PROVIDER_CALL = timedelta(seconds=30)
_KYC_START_DEADLINE = timedelta(hours=1)
_PROVIDER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=[KYC_REJECTED],
)
# Our own services: retried until they answer.
_OURS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)
_NOTICE_DEADLINE = timedelta(hours=1)
_RECORD_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))


@workflow.defn(name=ONBOARDING_WORKFLOW)
class OnboardingWorkflow:
    @workflow.init
    def __init__(self, application: OnboardingInput) -> None:
        self._app = application
        self._state = OnboardingState(
            onboarding_id=application.onboarding_id,
            status="received",
            missing=[] if application.documents_provided else ["document"],
        )
        self._documents_in = application.documents_provided
        self._resends_asked = 0
        self._cancel: CancelApplication | None = None
        # Set the moment the outcome is known: from then on a cancel is ignored.
        self._decided = False
        self._verification_id: str | None = None
        self._verdicts: dict[str, KycVerdictSignal] = {}  # by verification id, first wins
        self._kyc_checks: dict[str, str] = {}
        self._kyc_failure: str | None = None

    # ---- what the outside sees and sends ------------------------------------------------

    @workflow.query(name=GET_APPLICATION_QUERY)
    def get_application(self) -> OnboardingState:
        return self._state

    @workflow.signal(name=DOCUMENTS_SUBMITTED_SIGNAL)
    def documents_submitted(self, documents: DocumentsSubmitted) -> None:
        if self._documents_in or self._state.status in TERMINAL_ONBOARDING:
            return
        self._documents_in = True
        self._state.missing = []

    @workflow.signal(name=RESEND_REMINDER_SIGNAL)
    def resend_reminder(self) -> None:
        # Only while the wait for documents runs; the main loop sends it.
        if self._state.status == "awaiting_documents" and not self._documents_in:
            self._resends_asked += 1

    @workflow.signal(name=KYC_VERDICT_SIGNAL)
    def kyc_verdict(self, answer: KycVerdictSignal) -> None:
        if answer.verdict not in VERDICTS:
            workflow.logger.warning(
                "onboarding %s: ignored unknown KYC verdict %r",
                self._app.onboarding_id,
                answer.verdict,
            )
            return
        # Kept by verification id: a callback may arrive before start_kyc_check returns
        # the id, and one for another verification must never decide this application.
        self._verdicts.setdefault(answer.verification_id, answer)

    @workflow.signal(name=CANCEL_SIGNAL)
    def cancel(self, request: CancelApplication) -> None:
        if self._decided or self._cancel is not None:
            workflow.logger.info(
                "onboarding %s: cancel by %s ignored (status %s)",
                self._app.onboarding_id,
                request.actor,
                self._state.status,
            )
            return
        self._cancel = request

    def _canceled(self) -> bool:
        # A method, not the attribute: the signal handler sets it between awaits.
        return self._cancel is not None

    # ---- the saga ------------------------------------------------------------------------

    @workflow.run
    async def run(self, application: OnboardingInput) -> OnboardingState:
        await self._set_status("received")
        await self._saga()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state

    async def _saga(self) -> None:  # noqa: PLR0911 - one return per business outcome
        """The steps in order; each return is an outcome (module docstring)."""
        a = self._app
        if not a.documents_provided:
            expired = await self._await_documents()
            if self._canceled():
                return await self._end("canceled", "canceled")
            if expired:
                return await self._end("expired", "documents_not_received")

        self._waiting_for("the applicant's user in the identity directory")
        try:
            self._state.user_id = await self._ours(CREATE_APPLICANT_USER, self._ref(), str)
        except ActivityError as exc:
            if _failure(exc) != EMAIL_TAKEN:
                raise
            # Another user of the realm has this address (an earlier application of the
            # same person, say): no user can be made for this one, so it ends here rather
            # than failing with its row left open.
            return await self._end("rejected", "email_in_use")
        if self._canceled():
            return await self._end("canceled", "canceled")

        await self._set_status("verifying")
        verdict = await self._verify()
        if self._canceled():
            return await self._end("canceled", "canceled")
        self._state.kyc_verdict = verdict.verdict if verdict else None
        self._kyc_checks = dict(verdict.checks) if verdict else {}

        await self._set_status("screening")
        self._waiting_for("the sanctions and PEP screening")
        screening = await self._ours(SCREEN_APPLICANT, self._ref(), ScreeningSummary)
        self._state.screening = screening
        if self._canceled():
            return await self._end("canceled", "canceled")

        tier, reasons = risk_tier(
            kyc_verdict=self._state.kyc_verdict, screening=screening, country=a.country
        )
        self._state.risk_tier, self._state.risk_reasons = tier, reasons
        workflow.upsert_search_attributes([RISK_TIER.value_set(tier)])
        if tier == "low" and not reasons:
            return await self._approve("auto_approved")

        outcome = await self._review(tier, reasons)
        if outcome is None:
            return await self._end("canceled", "canceled")
        if outcome.outcome == "approved":
            return await self._approve("review_approved")
        return await self._end(
            "rejected", "review_expired" if outcome.sla_expired else "review_rejected"
        )

    async def _await_documents(self) -> bool:
        """Remind, then expire; True when the application expired before documents came."""
        policy = self._app.policy
        received = workflow.now()
        deadlines = [
            (policy.first_reminder_seconds, "reminder"),
            (policy.second_reminder_seconds, "reminder"),
            (policy.expiry_seconds, "expiry"),
        ]
        await self._set_status("awaiting_documents")
        for seconds, what in deadlines:
            due = received + timedelta(seconds=seconds)
            while True:
                self._waiting_for(
                    f"documents ({self._state.reminders_sent} reminders sent; "
                    f"next {what} at {due.isoformat()})"
                )
                try:
                    await workflow.wait_condition(
                        lambda: self._documents_in or self._canceled() or self._resends_asked > 0,
                        timeout=max(due - workflow.now(), timedelta(0)),
                        timeout_summary=f"documents: {what} due {due.isoformat()}",
                    )
                except TimeoutError:
                    break
                if self._documents_in or self._canceled():
                    return False
                self._resends_asked -= 1
                await self._remind()
            if what == "expiry":
                return True
            await self._remind()
            if self._documents_in or self._canceled():
                return False
        return True  # (unreachable: the last deadline is the expiry)

    async def _remind(self) -> None:
        self._state.reminders_sent += 1
        await self._notify("reminder", self._state.reminders_sent)

    async def _verify(self) -> KycVerdictSignal | None:
        """The provider's verdict, or None when none came (or the application was canceled)."""
        started = await self._start_check()
        if started is None:
            return None
        self._verification_id = started.verification_id
        await self._record()  # the verification id, for operators and the callback's lookup
        return _verdict_of(started) or await self._await_verdict(started.verification_id)

    async def _start_check(self) -> KycCheckStarted | None:
        self._waiting_for("the KYC provider to take the check")
        try:
            started: KycCheckStarted = await workflow.execute_activity(
                START_KYC_CHECK,
                self._ref(),
                result_type=KycCheckStarted,
                start_to_close_timeout=_PROVIDER_CALL,
                schedule_to_close_timeout=_KYC_START_DEADLINE,
                retry_policy=_PROVIDER_RETRY,
            )
        except ActivityError as exc:
            self._kyc_failure = _failure(exc)
            workflow.logger.warning(
                "onboarding %s: the KYC check could not be started (%s); to review",
                self._app.onboarding_id,
                self._kyc_failure,
            )
            return None
        return started

    async def _await_verdict(self, verification_id: str) -> KycVerdictSignal | None:
        """The callback first; without one in time, poll; a callback meanwhile wins."""
        policy = self._app.policy
        wait_until = workflow.now() + timedelta(seconds=policy.kyc_callback_wait_seconds)
        self._waiting_for(f"the KYC provider's callback (until {wait_until.isoformat()})")
        if await self._verdict_within(policy.kyc_callback_wait_seconds):
            return self._answer()
        interval = policy.kyc_poll_interval_seconds
        for attempt in range(1, policy.kyc_poll_attempts + 1):
            if attempt > 1:
                poll_at = workflow.now() + timedelta(seconds=interval)
                self._waiting_for(
                    f"the KYC provider's callback (poll {attempt} of "
                    f"{policy.kyc_poll_attempts} at {poll_at.isoformat()})"
                )
                if await self._verdict_within(interval):
                    return self._answer()
            self._waiting_for(
                f"the KYC provider's answer to poll {attempt} of {policy.kyc_poll_attempts}"
            )
            polled = await self._poll(verification_id, interval)
            # A callback that came while the poll ran wins.
            answer = self._answer() or _verdict_of(polled)
            if answer is not None:
                return answer
        workflow.logger.info(
            "onboarding %s: no KYC verdict after %d polls; to review",
            self._app.onboarding_id,
            policy.kyc_poll_attempts,
        )
        return None

    def _answer(self) -> KycVerdictSignal | None:
        if self._verification_id is None:
            return None
        return self._verdicts.get(self._verification_id)

    async def _verdict_within(self, seconds: int) -> bool:
        """Wait for the callback (or a cancel); False when the time ran out."""
        try:
            await workflow.wait_condition(
                lambda: self._answer() is not None or self._canceled(),
                timeout=timedelta(seconds=seconds),
                timeout_summary="KYC: callback or next poll",
            )
        except TimeoutError:
            return False
        return True

    async def _poll(self, verification_id: str, seconds: int) -> KycCheckStarted | None:
        try:
            polled: KycCheckStarted = await workflow.execute_activity(
                GET_KYC_VERIFICATION,
                verification_id,
                result_type=KycCheckStarted,
                start_to_close_timeout=_PROVIDER_CALL,
                # Retries never run into the next poll.
                schedule_to_close_timeout=timedelta(seconds=seconds),
                retry_policy=_PROVIDER_RETRY,
            )
        except ActivityError as exc:
            self._kyc_failure = _failure(exc)
            workflow.logger.warning(
                "onboarding %s: a KYC poll failed (%s)", self._app.onboarding_id, self._kyc_failure
            )
            return None
        return polled

    async def _review(self, tier: RiskTier, reasons: list[str]) -> ReviewOutcome | None:
        """Open the case and wait for its outcome; None when the application was canceled."""
        a = self._app
        review_id = review_id_for(a.onboarding_id)
        self._state.review_id = review_id
        await self._set_status("in_review")
        evidence = self._evidence(tier)
        handle = await workflow.start_child_workflow(
            REVIEW_WORKFLOW,
            OpenReviewInput(
                review_id=review_id,
                kind="onboarding",
                subject_id=a.onboarding_id,
                customer_subject=self._user_id(),
                reasons=[ReviewReason(code, dict(evidence)) for code in reasons],
                required_approvals=2 if tier == a.policy.four_eyes_tier else 1,
                default_outcome="rejected",
            ),
            id=review_id,
            result_type=ReviewOutcome,
        )
        self._waiting_for(f"a compliance decision on {review_id}")  # the case is open now
        await workflow.wait_condition(lambda: handle.done() or self._canceled())
        if not handle.done():
            handle.cancel()  # the case is withdrawn with the application
            try:
                decided: ReviewOutcome = await handle
            except (ChildWorkflowError, asyncio.CancelledError):
                return None
            # A case decided a moment before the cancel reached it answers with that
            # decision: cancel is honoured only until the decision.
            return decided if workflow.patched(DECISION_BEFORE_CANCEL_STANDS) else None
        outcome: ReviewOutcome = handle.result()
        return outcome

    def _evidence(self, tier: RiskTier) -> dict[str, Any]:
        """What the officer decides on, attached to every reason: codes, scores and the
        list's names, never the applicant's data."""
        s = self._state.screening
        evidence: dict[str, Any] = {
            "risk_tier": tier,
            "kyc_verification_id": self._verification_id,
            "kyc_verdict": self._state.kyc_verdict,
            "kyc_checks": dict(self._kyc_checks),
            "country": self._app.country,
        }
        if self._state.kyc_verdict is None and self._kyc_failure is not None:
            evidence["kyc_failure"] = self._kyc_failure  # why there is no verdict
        if s is not None:
            evidence.update(
                screening_possible_match=s.possible_match,
                screening_score=s.best_score,
                screening_threshold=s.threshold,
                screening_entry_id=s.entry_id,
                screening_entry_name=s.entry_name,
                screening_algorithm=s.algorithm,
                screening_list_version=s.list_version,
                screening_topics=list(s.topics),
                screening_birth_date_match=s.birth_date_match,
            )
        return evidence

    # ---- the end -------------------------------------------------------------------------

    async def _approve(self, reason: str) -> None:
        a = self._app
        self._decided = True
        self._state.decision_reason = reason
        # Activated first, then "approved": an approved application's customer can log in
        # (once they set their password) and has a wallet.
        self._waiting_for("the customer's activation (user, set-password email, wallet)")
        activation = await self._ours(
            ACTIVATE_CUSTOMER,
            ActivateInput(
                onboarding_id=a.onboarding_id,
                customer_id=a.customer_id,
                user_id=self._user_id(),
                currency=a.currency,
            ),
            Activation,
        )
        self._state.wallet_account_id = activation.wallet_account_id
        await self._set_status("approved")
        self._waiting_for("the welcome notice")
        await self._notify("welcome")
        self._waiting_for("")

    async def _end(self, status: NoticeKind, reason: str) -> None:
        """rejected / expired / canceled: nothing is activated; the applicant hears of it in
        neutral words (the notice kind says which, never why)."""
        self._decided = True
        self._state.decision_reason = reason
        if status == "canceled" and self._cancel is not None:
            workflow.logger.info(
                "onboarding %s canceled by %s", self._app.onboarding_id, self._cancel.actor
            )
        await self._set_status(status)
        self._waiting_for("the applicant's notice")
        await self._notify(status)
        self._waiting_for("")

    # ---- steps shared by the above ---------------------------------------------------------

    def _ref(self) -> ApplicantRef:
        return ApplicantRef(
            onboarding_id=self._app.onboarding_id, customer_id=self._app.customer_id
        )

    def _user_id(self) -> str:
        if self._state.user_id is None:  # the saga creates the user before any of its uses
            raise ApplicationError("no applicant user yet", type="SagaOrder", non_retryable=True)
        return self._state.user_id

    async def _ours(self, activity: str, arg: object, result_type: type[T]) -> T:
        result: T = await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_OURS_RETRY,
        )
        return result

    async def _notify(self, kind: NoticeKind, sequence: int = 0) -> None:
        a = self._app
        try:
            await workflow.execute_activity(
                NOTIFY_APPLICANT,
                ApplicantNotice(a.onboarding_id, a.customer_id, kind, sequence),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=_NOTICE_DEADLINE,
                retry_policy=_OURS_RETRY,
            )
        except ActivityError as exc:
            workflow.logger.warning(
                "onboarding %s: %s notice %d not sent (%s)",
                a.onboarding_id,
                kind,
                sequence,
                _failure(exc),
            )

    def _waiting_for(self, what: str) -> None:
        self._state.waiting_for = what
        workflow.set_current_details(
            f"**onboarding {self._app.onboarding_id}** · {self._state.status}"
            + (f" · waiting for {what}" if what else "")
        )

    async def _set_status(self, status: str) -> None:
        self._state.status = status
        workflow.upsert_search_attributes([STATUS.value_set(status)])
        await self._record()

    async def _record(self) -> None:
        s = self._state
        await workflow.execute_local_activity(
            RECORD_ONBOARDING,
            OnboardingRecord(
                onboarding_id=s.onboarding_id,
                status=s.status,
                user_id=s.user_id,
                risk_tier=s.risk_tier,
                risk_reasons=list(s.risk_reasons),
                missing=list(s.missing),
                kyc_verification_id=self._verification_id,
                kyc_verdict=s.kyc_verdict,
                screening=s.screening,
                review_id=s.review_id,
                decision_reason=s.decision_reason,
                wallet_account_id=s.wallet_account_id,
            ),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=_RECORD_RETRY,
        )


def _verdict_of(check: KycCheckStarted | None) -> KycVerdictSignal | None:
    """The verdict in a start or poll answer, if the provider has one (and we know it)."""
    if check is None or check.status != "completed" or check.verdict is None:
        return None
    if check.verdict not in VERDICTS:
        return None
    return KycVerdictSignal(check.verification_id, check.verdict)


def _failure(exc: ActivityError) -> str:
    """The failure's type for the record: the activity's error type, or what ended it."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type
    return type(cause).__name__ if cause is not None else type(exc).__name__


if __name__ == "__main__":  # the sandbox re-imports this module; nothing runs on import
    pass
