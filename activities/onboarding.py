"""Onboarding activities: the saga's side effects, each safe to run more than once.

The applicant's personal data never travels through Temporal: every activity that needs it
reads it from ``customers.pii`` by ``customer_id`` and returns ids, codes and scores only.

How each is idempotent:

- ``create_applicant_user``: the username is the customer id, so a retry finds the user it
  created (usernames end up in tokens and logs: they must not carry a name or an email).
- ``start_kyc_check``: the provider's Idempotency-Key is the onboarding id; a retry gets the
  same verification back.
- ``activate_customer``: enabling and opening the wallet are idempotent; Keycloak's
  set-password mail is sent once per application (``password_email_sent_at``); a crash
  between sending and marking sends it again, which is better than never.
- ``notify_applicant``: the Message-ID is fixed per (application, kind, sequence), so a
  retried activity repeats the same message.
- ``record_onboarding``: a decided application is never moved.

Business refusals (the provider refused the request, an email address taken by another
user, a ledger rule) are non-retryable ApplicationErrors named after the rule; anything else
is retried by Temporal.
"""

from __future__ import annotations

import asyncio
from datetime import date

from temporalio import activity
from temporalio.exceptions import ApplicationError

from infra.identity import IdentityDirectory
from infra.kyc import KycProvider
from infra.ledger_store import LedgerStore
from infra.notifier import Notifier
from infra.onboarding_store import DOCUMENT, OnboardingStore, StoredApplication
from infra.sanctions import Screener
from models.contracts import IdentityUser
from models.errors import LedgerError
from models.kyc import (
    DOCUMENT_TYPES,
    KycDocument,
    KycPerson,
    KycRejected,
    KycVerification,
)
from models.ledger import AccountKind, NewAccount
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
    KycCheckStarted,
    OnboardingRecord,
    ScreeningSummary,
)
from models.payment import wallet_account_id

CUSTOMER_ROLE = "customer"
WALLET_CODE = "customer_wallet"

# ApplicationError types the workflow can tell apart (all non-retryable).
APPLICATION_NOT_FOUND = "ApplicationNotFound"
DOCUMENT_MISSING = "DocumentMissing"
KYC_REJECTED = "KycRejected"
NOTHING_TO_SCREEN = "NothingToScreen"

_DOCUMENT_NAMES = {
    "passport": "passport",
    "id_card": "national identity card",
    "driving_licence": "driving licence",
}


def _started(verification: KycVerification) -> KycCheckStarted:
    return KycCheckStarted(
        verification_id=verification.id,
        status=verification.status,
        verdict=verification.verdict,
    )


def _kyc_refusal(exc: KycRejected) -> ApplicationError:
    return ApplicationError(str(exc), exc.status_code, type=KYC_REJECTED, non_retryable=True)


def applicant_message(
    kind: str, *, onboarding_id: str, missing: list[str], currency: str
) -> tuple[str, str]:
    """Subject and body of a mail to the applicant, in plain words.

    A refusal, an expiry or a cancellation says only that the application is closed: the
    reason (a sanctions or PEP hit above all) is never revealed to the applicant.
    """
    reference = f"Reference: {onboarding_id}"
    footer = f"\n\n{reference}\n\nThis message was sent automatically by BFC Payments.\n"
    if kind == "reminder":
        wanted = missing or [DOCUMENT]
        what = ", ".join("an identity document" if m == DOCUMENT else m for m in wanted)
        kinds = ", ".join(_DOCUMENT_NAMES.values())
        return (
            "Your BFC Payments application: we still need a document",
            "Hello,\n\n"
            f"To finish opening your account we still need {what} from you: a photo or "
            f"scan of a valid {kinds}.\n\n"
            "Please send it through the app you applied with. If we do not receive it, "
            "your application will close and you would need to apply again." + footer,
        )
    if kind == "welcome":
        return (
            "Welcome to BFC Payments",
            "Hello,\n\n"
            "Your application is approved and your account is open. Your wallet in "
            f"{currency} is ready to use.\n\n"
            "You will receive a separate email with a link to set your password; after "
            "that you can sign in through the app." + footer,
        )
    if kind == "expired":
        return (
            "Your BFC Payments application has closed",
            "Hello,\n\n"
            "Your application has expired and is now closed. You are welcome to apply "
            "again at any time through the app." + footer,
        )
    if kind == "canceled":
        return (
            "Your BFC Payments application has closed",
            "Hello,\n\n"
            "Your application has been canceled and is now closed. If you did not expect "
            "this, please contact our customer support and quote the reference below." + footer,
        )
    if kind == "rejected":
        return (
            "Your BFC Payments application",
            "Hello,\n\n"
            "Thank you for applying. We are unable to open an account for you at this "
            "time, and your application is now closed.\n\n"
            "If you have questions, please contact our customer support and quote the "
            "reference below." + footer,
        )
    raise ValueError(f"unknown notice kind {kind!r}")


class OnboardingActivities:
    def __init__(  # noqa: PLR0917 - one adapter per outside party, wired by the worker
        self,
        store: OnboardingStore,
        directory: IdentityDirectory,
        kyc: KycProvider,
        screener: Screener,
        ledger: LedgerStore,
        notifier: Notifier,
        *,
        callback_url: str,
    ) -> None:
        self._store = store
        self._directory = directory
        self._kyc = kyc
        self._screener = screener
        self._ledger = ledger
        self._notifier = notifier
        self._callback_url = callback_url

    def _application(self, onboarding_id: str) -> StoredApplication:
        application = self._store.get(onboarding_id)
        if application is None:
            raise ApplicationError(
                f"no application {onboarding_id}", type=APPLICATION_NOT_FOUND, non_retryable=True
            )
        return application

    def _audit_user(self, onboarding_id: str, action: str, user: IdentityUser) -> None:
        # The same trail as activities/identity.py: ids and roles, no names.
        self._store.audit(
            actor=onboarding_id,
            action=action,
            subject=f"user:{user.id}",
            enabled=user.enabled,
            roles=user.realm_roles,
        )

    # -- identity ---------------------------------------------------------------------------
    @activity.defn(name=CREATE_APPLICANT_USER)
    def create_applicant_user(self, ref: ApplicantRef) -> str:
        """The applicant's Keycloak user, disabled, role customer; returns its id."""
        data = self._store.personal_data(ref.customer_id)
        user = self._directory.find(username=ref.customer_id)
        if user is None:
            holder = self._directory.find(email=data.email)
            if holder is not None:
                # Another account has this address (the realm refuses duplicate emails).
                raise ApplicationError(
                    f"the applicant's email address belongs to user {holder.id}",
                    type=EMAIL_TAKEN,
                    non_retryable=True,
                )
            user = self._directory.create_disabled_user(
                username=ref.customer_id,
                email=data.email,
                first_name=data.given_name,
                last_name=data.family_name,
            )
            self._audit_user(ref.onboarding_id, "identity.user_created", user)
        if CUSTOMER_ROLE not in user.realm_roles:
            user = self._directory.assign_realm_role(user.id, CUSTOMER_ROLE)
            self._audit_user(ref.onboarding_id, "identity.role_assigned", user)
        self._store.set_user_id(ref.customer_id, user.id)
        return user.id

    # -- KYC --------------------------------------------------------------------------------
    @activity.defn(name=START_KYC_CHECK)
    async def start_kyc_check(self, ref: ApplicantRef) -> KycCheckStarted:
        """Ask the provider to verify the applicant's document; the verdict comes later."""
        application = await asyncio.to_thread(self._application, ref.onboarding_id)
        data = await asyncio.to_thread(self._store.personal_data, ref.customer_id)
        if not data.document_number:
            raise ApplicationError(
                f"application {ref.onboarding_id} has no identity document yet",
                type=DOCUMENT_MISSING,
                non_retryable=True,
            )
        if data.document_type not in DOCUMENT_TYPES:
            raise ApplicationError(
                f"document type {data.document_type!r} is not one the provider checks",
                type=DOCUMENT_MISSING,
                non_retryable=True,
            )
        try:
            verification = await self._kyc.start_verification(
                reference=ref.onboarding_id,
                # The application does not name the issuing country; the country of
                # residence is the provider's best first guess.
                document=KycDocument(
                    type=data.document_type,
                    number=data.document_number,
                    country=application.country,
                ),
                person=KycPerson(
                    given_name=data.given_name,
                    family_name=data.family_name,
                    date_of_birth=date.fromisoformat(data.date_of_birth),
                ),
                idempotency_key=ref.onboarding_id,
                callback_url=self._callback_url,
            )
        except KycRejected as exc:  # KycRetryable propagates: Temporal retries
            raise _kyc_refusal(exc) from exc
        return _started(verification)

    @activity.defn(name=GET_KYC_VERIFICATION)
    async def get_kyc_verification(self, verification_id: str) -> KycCheckStarted:
        """Poll the provider, for when its callback does not come."""
        try:
            return _started(await self._kyc.get_verification(verification_id))
        except KycRejected as exc:
            raise _kyc_refusal(exc) from exc

    # -- screening --------------------------------------------------------------------------
    @activity.defn(name=SCREEN_APPLICANT)
    def screen_applicant(self, ref: ApplicantRef) -> ScreeningSummary:
        """Sanctions and PEP screening of the name and birth date (CPU work: runs in the
        worker's thread pool)."""
        data = self._store.personal_data(ref.customer_id)
        try:
            result = self._screener.screen(
                data.given_name, data.family_name, date.fromisoformat(data.date_of_birth)
            )
        except ValueError as exc:
            raise ApplicationError(str(exc), type=NOTHING_TO_SCREEN, non_retryable=True) from exc
        best = result.hits[0] if result.hits else None
        return ScreeningSummary(
            possible_match=result.possible_match,
            best_score=result.best_score,
            threshold=result.threshold,
            algorithm=result.algorithm,
            list_version=result.list_version,
            entry_id=best.entry_id if best else None,
            entry_name=best.entry_name if best else None,
            topics=list(result.topics),
            birth_date_match=best.birth_date_match if best else None,
        )

    # -- approval ---------------------------------------------------------------------------
    @activity.defn(name=ACTIVATE_CUSTOMER)
    async def activate_customer(self, request: ActivateInput) -> Activation:
        """Enable the user, have Keycloak mail the set-password link, open the wallet."""
        directory = self._directory
        user = await asyncio.to_thread(directory.set_enabled, request.user_id, enabled=True)
        await asyncio.to_thread(
            self._audit_user, request.onboarding_id, "identity.user_enabled", user
        )
        account_id = wallet_account_id(request.user_id, request.currency)
        try:
            # A liability of the platform to the customer, which can never go below zero
            # (the same account api/routes/accounts.py opens).
            await self._ledger.open_account(
                NewAccount(
                    id=account_id,
                    currency=request.currency,
                    kind=AccountKind.LIABILITY,
                    owner=request.user_id,
                    code=WALLET_CODE,
                    debits_must_not_exceed_credits=True,
                )
            )
        except LedgerError as exc:
            raise ApplicationError(exc.detail, type=type(exc).__name__, non_retryable=True) from exc
        application = await asyncio.to_thread(self._application, request.onboarding_id)
        sent = application.password_email_sent_at is not None
        if not sent and user.email:
            # Keycloak answers an error when it cannot hand the mail to its SMTP server;
            # that is retried (the user is enabled and the wallet open either way).
            await asyncio.to_thread(directory.send_set_password_email, request.user_id)
            await asyncio.to_thread(self._store.mark_password_email_sent, request.onboarding_id)
            await asyncio.to_thread(
                self._audit_user, request.onboarding_id, "identity.set_password_mailed", user
            )
            sent = True
        return Activation(
            user_id=request.user_id, wallet_account_id=account_id, password_email_sent=sent
        )

    # -- the applicant and the record -------------------------------------------------------
    @activity.defn(name=NOTIFY_APPLICANT)
    def notify_applicant(self, notice: ApplicantNotice) -> None:
        application = self._application(notice.onboarding_id)
        data = self._store.personal_data(notice.customer_id)
        subject, body = applicant_message(
            notice.kind,
            onboarding_id=notice.onboarding_id,
            missing=application.missing,
            currency=application.currency,
        )
        self._notifier.send(
            to=[data.email],
            subject=subject,
            body=body,
            # One message per application, kind and sequence: a retry repeats the same one.
            message_id=f"{notice.onboarding_id}.{notice.kind}-{notice.sequence}",
        )

    @activity.defn(name=RECORD_ONBOARDING)
    def record_onboarding(self, record: OnboardingRecord) -> None:
        self._store.record(record)
