"""Risk rules as worked examples: one payment, one policy, the band and the reasons it gets."""

from __future__ import annotations

import dataclasses
import math

import pytest

from models.risk import (
    FEATURE_NAMES,
    RiskAssessment,
    RiskBand,
    RiskFeatures,
    RiskPolicy,
    RiskReason,
    assess,
)

POLICY = RiskPolicy()
VERSION = "fraud-v1-000000000000"


def payment(**changes: object) -> RiskFeatures:
    """A quiet daytime transfer of 20.00 EUR to a known beneficiary by a long-time customer."""
    base = RiskFeatures(
        kind="transfer",
        amount_minor=2_000,
        currency="EUR",
        hour_of_day=14,
        payments_last_hour=0,
        amount_last_24h_minor=0,
        new_beneficiary=False,
        customer_age_days=400,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_an_ordinary_payment_with_a_low_score_is_approved_without_reasons() -> None:
    result = assess(payment(), 0.01, VERSION, POLICY)
    assert result == RiskAssessment(
        score=0.01, band=RiskBand.approve, reasons=(), model_version=VERSION
    )


# Each rule fired on its own. Over the default transaction limit a payment is also a large
# amount, so that rule is isolated with a lower limit (the default is in the boundaries test).
LOW_LIMIT = RiskPolicy(per_transaction_limit_minor=50_000)


@pytest.mark.parametrize(
    ("changes", "score", "policy", "band", "reason"),
    [
        ({"amount_minor": 50_001}, 0.0, LOW_LIMIT, RiskBand.decline, "over_transaction_limit"),
        (
            {"amount_minor": 2_000, "amount_last_24h_minor": 9_998_001},
            0.0,
            POLICY,
            RiskBand.decline,
            "over_daily_limit",
        ),
        ({"payments_last_hour": 31}, 0.0, POLICY, RiskBand.decline, "velocity"),
        ({"payments_last_hour": 11}, 0.0, POLICY, RiskBand.review, "velocity"),
        ({"amount_minor": 100_000}, 0.0, POLICY, RiskBand.review, "large_amount"),
        (
            {"new_beneficiary": True, "amount_minor": 50_000},
            0.0,
            POLICY,
            RiskBand.review,
            "new_beneficiary",
        ),
        ({}, 0.95, POLICY, RiskBand.decline, "model_score"),
        ({}, 0.7, POLICY, RiskBand.review, "model_score"),
    ],
)
def test_each_rule_alone_gives_its_band_and_reason(changes, score, policy, band, reason) -> None:
    result = assess(payment(**changes), score, VERSION, policy)
    assert result.band == band
    assert result.reasons == (reason,)


@pytest.mark.parametrize(
    ("changes", "score"),
    [
        ({"amount_minor": 99_999}, 0.0),  # one cent under the review amount
        ({"new_beneficiary": True, "amount_minor": 49_999}, 0.0),
        ({"new_beneficiary": False, "amount_minor": 99_999}, 0.0),  # known beneficiary
        ({"payments_last_hour": 10}, 0.0),  # "more than 10" means 11
        ({"amount_minor": 2_000, "amount_last_24h_minor": 9_998_000}, 0.0),  # exactly the day
        ({}, 0.6999),
    ],
)
def test_just_under_every_threshold_is_approved(changes, score) -> None:
    result = assess(payment(**changes), score, VERSION, POLICY)
    assert (result.band, result.reasons) == (RiskBand.approve, ())


def test_the_boundaries_exactly() -> None:
    # The development policy reviews every payment of 1,000.00 or more: 100_000 is in.
    assert assess(payment(amount_minor=100_000), 0, VERSION, POLICY).band == RiskBand.review
    # The transaction limit is the largest allowed amount: 50,000.00 itself is reviewed only.
    at_limit = assess(payment(amount_minor=5_000_000), 0, VERSION, POLICY)
    assert (at_limit.band, at_limit.reasons) == (RiskBand.review, ("large_amount",))
    over = assess(payment(amount_minor=5_000_001), 0, VERSION, POLICY)
    assert (over.band, over.reasons) == (
        RiskBand.decline,
        ("large_amount", "over_transaction_limit"),
    )
    # Velocity 30 is still a review, 31 a decline.
    assert assess(payment(payments_last_hour=30), 0, VERSION, POLICY).band == RiskBand.review
    assert assess(payment(payments_last_hour=31), 0, VERSION, POLICY).band == RiskBand.decline
    # Scores are compared as recorded (4 places): 0.949951 rounds to 0.95 and declines.
    rounded = assess(payment(), 0.949951, VERSION, POLICY)
    assert (rounded.score, rounded.band) == (0.95, RiskBand.decline)
    assert assess(payment(), 0.94994, VERSION, POLICY).band == RiskBand.review


def test_decline_beats_review_and_every_reason_is_listed_sorted() -> None:
    features = payment(
        amount_minor=6_000_000,
        new_beneficiary=True,
        payments_last_hour=12,
        amount_last_24h_minor=5_000_000,
    )
    result = assess(features, 0.8, VERSION, POLICY)
    assert result.band == RiskBand.decline
    assert result.reasons == (
        "large_amount",
        "model_score",
        "new_beneficiary",
        "over_daily_limit",
        "over_transaction_limit",
        "velocity",
    )


def test_review_beats_approve_when_only_reviews_fire() -> None:
    result = assess(payment(amount_minor=150_000, new_beneficiary=True), 0.75, VERSION, POLICY)
    assert result.band == RiskBand.review
    assert result.reasons == ("large_amount", "model_score", "new_beneficiary")


def test_velocity_is_one_reason_even_when_it_declines() -> None:
    result = assess(payment(payments_last_hour=50), 0.0, VERSION, POLICY)
    assert result.reasons == ("velocity",)


def test_the_policy_is_what_decides() -> None:
    strict = RiskPolicy(review_amount_minor=1_000, model_review_score=0.2)
    result = assess(payment(amount_minor=1_000), 0.3, VERSION, strict)
    assert result.band == RiskBand.review
    assert result.reasons == ("large_amount", "model_score")
    assert assess(payment(amount_minor=1_000), 0.3, VERSION, POLICY).band == RiskBand.approve


def test_the_same_inputs_give_an_equal_assessment() -> None:
    features = payment(amount_minor=120_000, payments_last_hour=15)
    results = {assess(features, 0.123456, VERSION, POLICY) for _ in range(5)}
    assert len(results) == 1
    (result,) = results
    assert result.score == 0.1235
    assert result.model_version == VERSION


def test_reason_codes_are_the_stable_strings() -> None:
    assert sorted(r.value for r in RiskReason) == [
        "large_amount",
        "model_score",
        "new_beneficiary",
        "over_daily_limit",
        "over_transaction_limit",
        "velocity",
    ]
    assert [b.value for b in RiskBand] == ["approve", "review", "decline"]


@pytest.mark.parametrize("score", [-0.01, 1.01, math.nan])
def test_a_score_that_is_not_a_probability_is_refused(score) -> None:
    with pytest.raises(ValueError, match="model_score"):
        assess(payment(), score, VERSION, POLICY)


def test_an_inconsistent_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RiskPolicy(model_review_score=0.9, model_decline_score=0.8)
    with pytest.raises(ValueError):
        RiskPolicy(velocity_review_per_hour=40, velocity_decline_per_hour=30)


@pytest.mark.parametrize(
    "changes",
    [{"kind": "refund"}, {"currency": "XXX"}, {"hour_of_day": 24}, {"amount_minor": -1}],
)
def test_features_out_of_range_are_refused(changes) -> None:
    with pytest.raises(ValueError):
        payment(**changes)


def test_the_vector_follows_feature_names() -> None:
    features = payment(
        kind="payout",
        amount_minor=99_900,  # 999.00 EUR
        hour_of_day=3,
        payments_last_hour=4,
        amount_last_24h_minor=900,
        new_beneficiary=True,
        customer_age_days=2,
    )
    named = dict(zip(FEATURE_NAMES, features.vector(), strict=True))
    assert named == {
        "kind_topup": 0.0,
        "kind_transfer": 0.0,
        "kind_payout": 1.0,
        "log_amount": pytest.approx(3.0),
        "hour_of_day": 3.0,
        "night": 1.0,
        "payments_last_hour": 4.0,
        "log_amount_last_24h": pytest.approx(1.0),
        "new_beneficiary": 1.0,
        "customer_age_days": 2.0,
    }
    assert RiskFeatures.FEATURE_NAMES == FEATURE_NAMES


def test_amounts_reach_the_model_in_major_units_whatever_the_exponent() -> None:
    euros = payment(amount_minor=99_900, currency="EUR").vector()
    yen = payment(amount_minor=999, currency="JPY").vector()
    assert euros[FEATURE_NAMES.index("log_amount")] == yen[FEATURE_NAMES.index("log_amount")]


def test_a_model_that_does_not_decide_is_recorded_but_leaves_the_rules_to_decide() -> None:
    advisory = dataclasses.replace(POLICY, model_decides=False)
    quiet = assess(payment(), 0.99, VERSION, advisory)
    assert (quiet.band, quiet.reasons, quiet.score) == (RiskBand.approve, (), 0.99)
    large = assess(payment(amount_minor=POLICY.review_amount_minor), 0.99, VERSION, advisory)
    assert (large.band, large.reasons) == (RiskBand.review, (RiskReason.large_amount,))
    assert assess(payment(), 0.99, VERSION, POLICY).band == RiskBand.decline
