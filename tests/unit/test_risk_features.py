"""What the risk rules and the model see of a payment: its hour in UTC, as trained."""

from __future__ import annotations

from datetime import UTC, datetime

from activities.payment import risk_features
from infra.payment_store import RiskHistory
from models.payment import ScoreInput

QUIET = RiskHistory(
    payments_last_hour=0, amount_last_24h=0, known_beneficiary=True, first_payment_at=None
)


def _scored_at(created_at: str) -> int:
    request = ScoreInput(
        payment_id="pay_t", customer_id="cus_t", kind="transfer", amount=1_000,
        currency="EUR", beneficiary="acc_b", created_at=created_at,
    )  # fmt: skip
    return risk_features(request, QUIET).hour_of_day


def test_the_hour_is_the_utc_hour_whatever_zone_the_time_came_in() -> None:
    # 00:30 in Berlin is 23:30 UTC: not the night hours the model learnt in UTC.
    assert _scored_at("2025-01-31T00:30:00+01:00") == 23
    assert _scored_at("2025-01-31T02:30:00-05:00") == 7
    assert _scored_at(datetime(2025, 1, 31, 3, 0, tzinfo=UTC).isoformat()) == 3


def test_the_customers_age_counts_from_their_first_payment() -> None:
    first = datetime(2025, 1, 1, tzinfo=UTC)
    request = ScoreInput(
        payment_id="pay_t", customer_id="cus_t", kind="transfer", amount=1_000,
        currency="EUR", beneficiary="acc_new", created_at="2025-01-31T12:00:00+00:00",
    )  # fmt: skip
    history = RiskHistory(
        payments_last_hour=2, amount_last_24h=5_000, known_beneficiary=False,
        first_payment_at=first,
    )  # fmt: skip
    features = risk_features(request, history)
    assert (features.customer_age_days, features.new_beneficiary) == (30, True)
    assert (features.payments_last_hour, features.amount_last_24h_minor) == (2, 5_000)
