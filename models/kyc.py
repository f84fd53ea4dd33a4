"""Identity verification at the KYC provider: what we send, what it answers, how it fails.

A verification is started with the applicant's document and person data and answered later,
asynchronously: the provider calls our webhook with its verdict (and can be polled).
``KycVerification`` carries ids, the verdict and per-check outcomes only, never the person's
data, so it may travel through Temporal as an activity result or a signal.

Errors (see models/errors.py for the taxonomy)::

    KycError
    ├── KycRetryable (TransientError)    no answer, 429 or 5xx: retry with the same
    │                                    idempotency key; the provider starts nothing twice
    └── KycRejected (BusinessRuleError)  the provider refused the request (bad key, invalid
                                         data, idempotency key reused with another body,
                                         unknown verification): the same request gets the
                                         same answer, so retrying is pointless
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import ClassVar, Literal

from models.errors import BusinessRuleError, PlatformError, TransientError

KycVerdict = Literal["clear", "mismatch", "forged", "needs_manual_check"]
KycStatus = Literal["pending", "completed"]
DocumentType = Literal["passport", "id_card", "driving_licence"]
CheckOutcome = Literal["pass", "fail", "inconclusive"]

VERDICTS: tuple[KycVerdict, ...] = ("clear", "mismatch", "forged", "needs_manual_check")
STATUSES: tuple[KycStatus, ...] = ("pending", "completed")
DOCUMENT_TYPES: tuple[DocumentType, ...] = ("passport", "id_card", "driving_licence")
CHECK_OUTCOMES: tuple[CheckOutcome, ...] = ("pass", "fail", "inconclusive")


@dataclass(frozen=True)
class KycDocument:
    type: DocumentType
    number: str
    country: str  # ISO 3166-1 alpha-2, upper case: the issuing country


@dataclass(frozen=True)
class KycPerson:
    given_name: str
    family_name: str
    date_of_birth: date


@dataclass(frozen=True)
class KycVerification:
    """The provider's view of one verification (``ver_…``), for our reference (``onb_…``)."""

    id: str
    reference: str
    status: KycStatus
    verdict: KycVerdict | None = None
    # Check name -> outcome, e.g. {"document_authentic": "pass", "data_match": "fail"}.
    checks: dict[str, CheckOutcome] = field(default_factory=dict)
    completed_at: datetime | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


class KycError(PlatformError):
    pass


class KycRetryable(KycError, TransientError):
    """No usable answer from the provider this time; the same request may succeed later."""


class KycRejected(KycError, BusinessRuleError):
    """The provider said no to the request itself; ``status_code`` is its HTTP status."""

    code: ClassVar[str] = "kyc_rejected"

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
