"""Payment risk: what a payment looks like to the scorer, the rules, and the band they give.

The ``score_payment`` activity gathers a customer's recent payments into ``RiskFeatures``,
asks the fraud model (``infra/fraud_model.py``) for a probability, and hands both to
``assess``, which applies ``RiskPolicy`` and returns a ``RiskAssessment``: a band
(approve / review / decline), every reason code that fired, the score and the model version,
all of which are recorded on the payment.

Pure: no I/O and no ML library here; the model only ever sees ``RiskFeatures.vector()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

from models.money import CURRENCY_EXPONENTS

PaymentKind = Literal["topup", "transfer", "payout"]
PAYMENT_KINDS: tuple[PaymentKind, ...] = ("topup", "transfer", "payout")

# Night in UTC, when a customer's own payments are rare and account takeovers are not.
NIGHT_HOURS = range(6)

# The model's input, in this order. A change here changes every model version (the names are
# hashed into it) and makes stored artifacts unusable, so ``ensure_model`` retrains. Changing
# what a feature means without renaming it would not: rename it then.
#   kind_topup, kind_transfer, kind_payout   one-hot of ``kind``
#   log_amount                               log10(1 + amount in major units)
#   hour_of_day                              0..23, UTC
#   night                                    1 if the hour is in NIGHT_HOURS
#   payments_last_hour                       count, this payment excluded
#   log_amount_last_24h                      log10(1 + previous 24 h in major units)
#   new_beneficiary                          1 if a transfer/payout to a new destination
#   customer_age_days                        days since the customer's first payment/account
# Amounts are in major units so currencies with another exponent land on the same scale; the
# logs keep a linear model honest about amounts spanning six orders of magnitude (trees do
# not care).
FEATURE_NAMES: tuple[str, ...] = (
    "kind_topup",
    "kind_transfer",
    "kind_payout",
    "log_amount",
    "hour_of_day",
    "night",
    "payments_last_hour",
    "log_amount_last_24h",
    "new_beneficiary",
    "customer_age_days",
)


class RiskBand(StrEnum):
    approve = "approve"
    review = "review"
    decline = "decline"


# The strongest band wins: a decline beats a review beats an approval.
_BAND_STRENGTH = {RiskBand.approve: 0, RiskBand.review: 1, RiskBand.decline: 2}


class RiskReason(StrEnum):
    """Stable reason codes: stored on payments and review cases, so never renamed."""

    over_transaction_limit = "over_transaction_limit"
    over_daily_limit = "over_daily_limit"
    velocity = "velocity"
    large_amount = "large_amount"
    new_beneficiary = "new_beneficiary"
    model_score = "model_score"


@dataclass(frozen=True)
class RiskFeatures:
    """One payment as the scorer sees it; counts and sums exclude the payment itself."""

    FEATURE_NAMES: ClassVar[tuple[str, ...]] = FEATURE_NAMES

    kind: PaymentKind
    amount_minor: int
    currency: str
    hour_of_day: int  # UTC
    payments_last_hour: int
    amount_last_24h_minor: int  # same currency as the payment
    new_beneficiary: bool
    customer_age_days: int  # 0 for a customer seen for the first time

    def __post_init__(self) -> None:
        if self.kind not in PAYMENT_KINDS:
            raise ValueError(f"unknown payment kind {self.kind!r}")
        if self.currency not in CURRENCY_EXPONENTS:
            raise ValueError(f"unsupported currency {self.currency!r}")
        if not 0 <= self.hour_of_day <= 23:
            raise ValueError(f"hour_of_day must be 0..23, got {self.hour_of_day}")
        for name in ("amount_minor", "payments_last_hour", "amount_last_24h_minor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.customer_age_days < 0:
            raise ValueError("customer_age_days must not be negative")

    def vector(self) -> list[float]:
        """The model's input, ordered as ``FEATURE_NAMES``."""
        scale = 10 ** CURRENCY_EXPONENTS[self.currency]
        return [
            float(self.kind == "topup"),
            float(self.kind == "transfer"),
            float(self.kind == "payout"),
            math.log10(1 + self.amount_minor / scale),
            float(self.hour_of_day),
            float(self.hour_of_day in NIGHT_HOURS),
            float(self.payments_last_hour),
            math.log10(1 + self.amount_last_24h_minor / scale),
            float(self.new_beneficiary),
            float(self.customer_age_days),
        ]


@dataclass(frozen=True)
class RiskPolicy:
    """Limits and thresholds. Amounts are minor units of the payment's currency.

    The defaults are sized for EUR (and currencies of similar value with two decimals); a
    deployment that takes JPY or BHD payments configures a policy per currency.
    """

    # One payment above 50,000.00 is declined outright.
    per_transaction_limit_minor: int = 5_000_000
    # The previous 24 h plus this payment above 100,000.00 is declined.
    per_day_limit_minor: int = 10_000_000
    # More payments than this in the previous hour go to review ...
    velocity_review_per_hour: int = 10
    # ... and more than this are declined (scripted abuse, not a person).
    velocity_decline_per_hour: int = 30
    # Every payment of 1,000.00 or more goes to a compliance officer.
    review_amount_minor: int = 100_000
    # A first payment to a destination of 500.00 or more goes to review.
    new_beneficiary_review_minor: int = 50_000
    # Model probability at or above which the payment is reviewed / declined.
    model_review_score: float = 0.7
    model_decline_score: float = 0.95
    # False: the score is recorded on every payment but decides nothing (the rules still
    # do) — for a model under evaluation, or a development stack whose few test customers
    # pay in bursts no real customer would.
    model_decides: bool = True

    def __post_init__(self) -> None:
        if self.velocity_review_per_hour > self.velocity_decline_per_hour:
            raise ValueError("velocity_review_per_hour must not exceed velocity_decline_per_hour")
        if not 0 <= self.model_review_score <= self.model_decline_score <= 1:
            raise ValueError("need 0 <= model_review_score <= model_decline_score <= 1")


@dataclass(frozen=True)
class RiskAssessment:
    score: float  # model probability of fraud, 0..1, rounded to 4 places
    band: RiskBand
    reasons: tuple[str, ...]  # RiskReason codes, sorted; empty when approved
    model_version: str


def assess(
    features: RiskFeatures, model_score: float, model_version: str, policy: RiskPolicy
) -> RiskAssessment:
    """Apply every rule; the strongest band wins and every rule that fired is a reason.

    ``A`` is ``features.amount_minor``, ``s`` the model score rounded to 4 places (the
    recorded score is the one the thresholds saw), ``n`` ``payments_last_hour``:

    ======================================================  ========  ======================
    condition                                               band      reason
    ======================================================  ========  ======================
    A > per_transaction_limit_minor                         decline   over_transaction_limit
    amount_last_24h_minor + A > per_day_limit_minor         decline   over_daily_limit
    n > velocity_decline_per_hour                           decline   velocity
    velocity_review_per_hour < n <= velocity_decline_...    review    velocity
    A >= review_amount_minor                                review    large_amount
    new_beneficiary and A >= new_beneficiary_review_minor   review    new_beneficiary
    s >= model_decline_score                                decline   model_score
    model_review_score <= s < model_decline_score           review    model_score
    none of the above                                       approve   (none)
    ======================================================  ========  ======================

    Band precedence: decline > review > approve. Reasons are unique and sorted, so the same
    inputs always give an equal assessment.
    """
    if not 0.0 <= model_score <= 1.0:  # also rejects NaN
        raise ValueError(f"model_score must be a probability in [0, 1], got {model_score}")
    score = round(model_score, 4)
    amount = features.amount_minor
    fired: list[tuple[RiskReason, RiskBand]] = []
    if amount > policy.per_transaction_limit_minor:
        fired.append((RiskReason.over_transaction_limit, RiskBand.decline))
    if features.amount_last_24h_minor + amount > policy.per_day_limit_minor:
        fired.append((RiskReason.over_daily_limit, RiskBand.decline))
    if features.payments_last_hour > policy.velocity_decline_per_hour:
        fired.append((RiskReason.velocity, RiskBand.decline))
    elif features.payments_last_hour > policy.velocity_review_per_hour:
        fired.append((RiskReason.velocity, RiskBand.review))
    if amount >= policy.review_amount_minor:
        fired.append((RiskReason.large_amount, RiskBand.review))
    if features.new_beneficiary and amount >= policy.new_beneficiary_review_minor:
        fired.append((RiskReason.new_beneficiary, RiskBand.review))
    if not policy.model_decides:
        pass
    elif score >= policy.model_decline_score:
        fired.append((RiskReason.model_score, RiskBand.decline))
    elif score >= policy.model_review_score:
        fired.append((RiskReason.model_score, RiskBand.review))

    bands = [band for _, band in fired]
    band = max(bands, key=_BAND_STRENGTH.__getitem__, default=RiskBand.approve)
    return RiskAssessment(
        score=score,
        band=band,
        reasons=tuple(sorted(reason.value for reason, _ in fired)),
        model_version=model_version,
    )
