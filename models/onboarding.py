"""Onboarding: from an application to an active, screened customer with a wallet.

What travels through Temporal here is ids, codes, scores and times: the applicant's personal
data stays in ``customers.pii`` (envelope-encrypted) and every activity that needs it reads
it there by ``customer_id``. So workflow ids, search attributes and payloads hold no name,
birth date, document number or address (payloads are encrypted as well).

The saga (``workflows/onboarding.py``)::

    received -> [awaiting_documents: reminders at 1 and 3 days, expiry at 7]
             -> create the Keycloak user (disabled, role customer)
             -> verifying: start the KYC check; the provider's signed callback signals the
                verdict; silence -> poll; still nothing -> review
             -> screening: sanctions/PEP list, fuzzy name + birth date
             -> risk tier (low / medium / high)
             -> low and clean: approved | otherwise in_review (ComplianceReviewWorkflow)
             -> approved: enable the user, Keycloak mails a set-password link, open the
                wallet, welcome email
                rejected / expired / canceled: the user stays disabled, a neutral email, the
                reason recorded (a sanctions hit is never revealed to the applicant)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ONBOARDING_WORKFLOW = "OnboardingWorkflow"

# Activities (called by name; implementations in activities/onboarding.py).
CREATE_APPLICANT_USER = "create_applicant_user"
START_KYC_CHECK = "start_kyc_check"
GET_KYC_VERIFICATION = "get_kyc_verification"
SCREEN_APPLICANT = "screen_applicant"
ACTIVATE_CUSTOMER = "activate_customer"
NOTIFY_APPLICANT = "notify_applicant"
RECORD_ONBOARDING = "record_onboarding"

# The ApplicationError type create_applicant_user raises when another user of the realm
# has the applicant's email address (Keycloak refuses duplicates): the application ends.
EMAIL_TAKEN = "ApplicantEmailTaken"

# Signals and the query (names the API uses).
KYC_VERDICT_SIGNAL = "kyc_verdict"
DOCUMENTS_SUBMITTED_SIGNAL = "documents_submitted"
RESEND_REMINDER_SIGNAL = "resend_reminder"
CANCEL_SIGNAL = "cancel"
GET_APPLICATION_QUERY = "get_application"

OnboardingStatus = Literal[
    "received",
    "awaiting_documents",
    "verifying",
    "screening",
    "in_review",
    "approved",
    "rejected",
    "expired",
    "canceled",
]
TERMINAL_ONBOARDING: frozenset[str] = frozenset({"approved", "rejected", "expired", "canceled"})
RiskTier = Literal["low", "medium", "high"]
NoticeKind = Literal["reminder", "welcome", "rejected", "expired", "canceled"]

# Countries whose applicants always get a compliance officer's look (development list of
# ISO 3166-1 codes; production takes it from the compliance team's policy).
HIGH_RISK_COUNTRIES: frozenset[str] = frozenset({"IR", "KP", "MM", "SY"})
MEDIUM_RISK_COUNTRIES: frozenset[str] = frozenset({"AE", "PA", "RU", "TR", "VN"})


@dataclass(frozen=True)
class OnboardingPolicy:
    """Durations in seconds, from the application (reminders, expiry) or the KYC request."""

    first_reminder_seconds: int = 24 * 3600
    second_reminder_seconds: int = 3 * 24 * 3600
    expiry_seconds: int = 7 * 24 * 3600
    # The provider answers by callback; without one in this time, poll.
    kyc_callback_wait_seconds: int = 15 * 60
    kyc_poll_interval_seconds: int = 10 * 60
    kyc_poll_attempts: int = 6  # then give up into review
    four_eyes_tier: RiskTier = "high"  # cases of this tier need two officers


@dataclass(frozen=True)
class OnboardingInput:
    onboarding_id: str  # onb_…
    customer_id: str  # cus_…: the row whose pii column holds the applicant's data
    client_id: str | None  # the app that applied
    country: str  # ISO 3166-1 alpha-2 of residence (not personal on its own)
    currency: str  # the wallet to open
    documents_provided: bool
    policy: OnboardingPolicy = field(default_factory=OnboardingPolicy)


@dataclass(frozen=True)
class KycVerdictSignal:
    """The provider's answer (from the verified callback, or a poll)."""

    verification_id: str
    verdict: str  # clear | mismatch | forged | needs_manual_check
    checks: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentsSubmitted:
    document_type: str  # the document itself is already stored, encrypted, by the API


@dataclass(frozen=True)
class CancelApplication:
    actor: str  # subject of the operator
    reason: str


@dataclass(frozen=True)
class ApplicantRef:
    onboarding_id: str
    customer_id: str


@dataclass(frozen=True)
class KycCheckStarted:
    verification_id: str
    status: str  # pending | completed
    verdict: str | None = None


@dataclass(frozen=True)
class ScreeningSummary:
    """What the decision and the officer need; never shown to the app or the applicant."""

    possible_match: bool
    best_score: float
    threshold: float
    algorithm: str
    list_version: str
    entry_id: str | None = None
    entry_name: str | None = None  # a listed name from the public list, not the applicant's
    topics: list[str] = field(default_factory=list)
    birth_date_match: bool | None = None


@dataclass(frozen=True)
class ActivateInput:
    onboarding_id: str
    customer_id: str
    user_id: str
    currency: str


@dataclass(frozen=True)
class Activation:
    user_id: str
    wallet_account_id: str
    password_email_sent: bool


@dataclass(frozen=True)
class ApplicantNotice:
    onboarding_id: str
    customer_id: str
    kind: NoticeKind
    sequence: int = 0  # reminders: 1, 2, … (one message per kind and sequence)


@dataclass(frozen=True)
class OnboardingRecord:
    """The application's state for the table the API reads (``record_onboarding``)."""

    onboarding_id: str
    status: str
    user_id: str | None = None
    risk_tier: str | None = None
    risk_reasons: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    kyc_verification_id: str | None = None
    kyc_verdict: str | None = None
    screening: ScreeningSummary | None = None
    review_id: str | None = None
    decision_reason: str | None = None
    wallet_account_id: str | None = None


@dataclass
class OnboardingState:
    """The ``get_application`` query: ids, codes, what the application waits for."""

    onboarding_id: str
    status: str
    waiting_for: str = ""
    missing: list[str] = field(default_factory=list)
    user_id: str | None = None
    risk_tier: str | None = None
    risk_reasons: list[str] = field(default_factory=list)
    kyc_verdict: str | None = None
    screening: ScreeningSummary | None = None
    review_id: str | None = None
    decision_reason: str | None = None
    wallet_account_id: str | None = None
    reminders_sent: int = 0


def risk_tier(
    *, kyc_verdict: str | None, screening: ScreeningSummary, country: str
) -> tuple[RiskTier, list[str]]:
    """Low / medium / high from the KYC verdict, the screening and the country, with the
    reasons that raised it. ``kyc_verdict`` None means the provider never answered.

    ================================  ======
    a forged document                 high
    a possible sanctions/PEP match    high
    high-risk country                 high
    data mismatch, manual check       medium
    no answer from the provider       medium
    medium-risk country               medium
    otherwise                         low
    ================================  ======
    """
    reasons: list[tuple[RiskTier, str]] = []
    if kyc_verdict == "forged":
        reasons.append(("high", "kyc_forged_document"))
    elif kyc_verdict == "mismatch":
        reasons.append(("medium", "kyc_data_mismatch"))
    elif kyc_verdict == "needs_manual_check":
        reasons.append(("medium", "kyc_needs_manual_check"))
    elif kyc_verdict is None:
        reasons.append(("medium", "kyc_no_answer"))
    if screening.possible_match:
        reasons.append(("high", "sanctions_possible_match"))
    if country in HIGH_RISK_COUNTRIES:
        reasons.append(("high", "high_risk_country"))
    elif country in MEDIUM_RISK_COUNTRIES:
        reasons.append(("medium", "medium_risk_country"))
    order: dict[RiskTier, int] = {"low": 0, "medium": 1, "high": 2}
    tier: RiskTier = max((t for t, _ in reasons), key=order.__getitem__, default="low")
    return tier, sorted(code for _, code in reasons)


def review_id_for(onboarding_id: str) -> str:
    """The compliance case of an application shares its suffix: ``onb_X`` -> ``rev_X``."""
    return "rev_" + onboarding_id.removeprefix("onb_")
