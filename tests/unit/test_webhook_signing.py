"""The webhook signature: what a receiver checks before it trusts a request."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from infra.webhooks import (
    InvalidSignature,
    event_body,
    parse_signature,
    sign,
    sign_with_each,
    verify,
)

SECRET = "whsec-test-0123456789"
NOW = 1_790_000_000
BODY = event_body(
    event_id="evt_test",
    event_type="payment.succeeded",
    created_at="2026-11-26T12:00:00+00:00",
    data={"id": "pay_test", "amount": 1050, "currency": "EUR"},
)


def test_a_signed_body_verifies() -> None:
    header = sign(SECRET, NOW, BODY)
    verify(SECRET, header, BODY, now=NOW + 10)  # raises if not


def test_the_signature_is_stripes_scheme_over_timestamp_dot_body() -> None:
    # Written out by hand, as a receiver in another language would compute it.
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == f"t={NOW},v1={expected}"


def test_a_tampered_body_is_refused() -> None:
    header = sign(SECRET, NOW, BODY)
    tampered = BODY.replace(b"1050", b"9050")
    assert tampered != BODY
    with pytest.raises(InvalidSignature, match="does not match"):
        verify(SECRET, header, tampered, now=NOW)


def test_another_secret_is_refused() -> None:
    header = sign("someone-elses-secret", NOW, BODY)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify(SECRET, header, BODY, now=NOW)


def test_a_moved_timestamp_is_refused() -> None:
    # The timestamp is signed: changing it to look fresh breaks the signature.
    signature = sign(SECRET, NOW, BODY).split(",")[1]
    with pytest.raises(InvalidSignature, match="does not match"):
        verify(SECRET, f"t={NOW + 3600},{signature}", BODY, now=NOW + 3600)


@pytest.mark.parametrize("age", [301, 3600, -301])
def test_a_timestamp_outside_the_tolerance_is_refused(age: int) -> None:
    header = sign(SECRET, NOW, BODY)
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify(SECRET, header, BODY, now=NOW + age)


def test_the_tolerance_is_the_receivers_choice() -> None:
    header = sign(SECRET, NOW, BODY)
    verify(SECRET, header, BODY, now=NOW + 300)  # on the edge of the default: accepted
    verify(SECRET, header, BODY, now=NOW + 3600, tolerance_seconds=3600)
    with pytest.raises(InvalidSignature):
        verify(SECRET, header, BODY, now=NOW + 60, tolerance_seconds=30)


def test_any_of_several_v1_signatures_may_match() -> None:
    # During a secret rotation a sender may sign with the old and the new secret.
    ours = sign(SECRET, NOW, BODY).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},{ours},v0=ignored"
    verify(SECRET, header, BODY, now=NOW)


def test_signed_with_each_secret_once() -> None:
    header = sign_with_each([SECRET, "whsec-previous", SECRET], NOW, BODY)
    assert header.startswith(f"t={NOW},") and header.count("v1=") == 2
    verify(SECRET, header, BODY, now=NOW)
    verify("whsec-previous", header, BODY, now=NOW)
    assert header.split(",")[1] == sign(SECRET, NOW, BODY).split(",")[1]


def test_header_parsing() -> None:
    assert parse_signature(f"t={NOW},v1=abc, v1=def,v9=later") == (NOW, ["abc", "def"])


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "no BFC-Signature"),
        ("", "no BFC-Signature"),
        ("v1=abc", "no timestamp"),
        (f"t={NOW}", "no v1"),
        (f"t={NOW},v0=abc", "no v1"),
        ("t=yesterday,v1=abc", "not a number"),
        ("t=-5,v1=abc", "not a number"),
        (f"t={NOW},v1", "malformed"),
        (f"t={NOW},v1=", "malformed"),
        ("garbage", "malformed"),
        # What int() or compare_digest would choke on: still just an invalid signature.
        ("t=\u00b2,v1=abc", "malformed"),
        (f"t={'9' * 5000},v1=abc", "malformed"),
        (f"t={NOW},v1=\u00e9t\u00e9", "malformed"),
    ],
)
def test_a_malformed_header_is_refused(header: str | None, why: str) -> None:
    with pytest.raises(InvalidSignature, match=why):
        verify(SECRET, header, BODY, now=NOW)


def test_the_body_is_the_same_bytes_every_time() -> None:
    # Retries sign and send the same bytes; key order in the data does not matter.
    again = event_body(
        event_id="evt_test",
        event_type="payment.succeeded",
        created_at="2026-11-26T12:00:00+00:00",
        data={"currency": "EUR", "amount": 1050, "id": "pay_test"},
    )
    assert again == BODY
