"""The KYC connector against a fake provider (httpx.MockTransport), and the callback signature.

The signatures here are computed with hmac directly, as the provider documents them, not
with any code of ours: a mistake in our check cannot cancel out a mistake in our signer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from infra.kyc import (
    InvalidCallback,
    InvalidSignature,
    KycProvider,
    parse_callback,
    verify_callback_signature,
)
from infra.settings import Settings
from models.errors import BusinessRuleError, TransientError
from models.kyc import KycDocument, KycPerson, KycRejected, KycRetryable

SECRET = "whsec-test-1"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
BODY = json.dumps(
    {
        "id": "ver_1",
        "reference": "onb_1",
        "status": "completed",
        "verdict": "mismatch",
        "checks": {"document_authentic": "pass", "data_match": "fail"},
        "completed_at": "2025-06-01T11:59:58.120Z",
    }
).encode()


def _header(secret: str, body: bytes, at: datetime) -> str:
    t = int(at.timestamp())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


# -- signature ------------------------------------------------------------------------------


def test_a_correct_signature_passes_and_the_body_parses() -> None:
    verify_callback_signature(SECRET, _header(SECRET, BODY, NOW), BODY, now=NOW)
    verification = parse_callback(BODY)
    assert verification.id == "ver_1"
    assert verification.reference == "onb_1"
    assert verification.verdict == "mismatch"
    assert verification.checks["data_match"] == "fail"
    assert verification.completed_at == datetime(2025, 6, 1, 11, 59, 58, 120_000, tzinfo=UTC)


def test_a_tampered_body_fails() -> None:
    header = _header(SECRET, BODY, NOW)
    tampered = BODY.replace(b'"mismatch"', b'"clear"')
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_callback_signature(SECRET, header, tampered, now=NOW)


def test_a_tampered_timestamp_fails() -> None:
    # A replayed callback with a fresh t: the signature covers t, so it no longer matches.
    header = _header(SECRET, BODY, NOW - timedelta(hours=1))
    mac = header.split(",")[1]
    fresh = f"t={int(NOW.timestamp())},{mac}"
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_callback_signature(SECRET, fresh, BODY, now=NOW)


def test_a_wrong_secret_fails() -> None:
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_callback_signature(SECRET, _header("another-secret", BODY, NOW), BODY, now=NOW)


@pytest.mark.parametrize("skew", [timedelta(seconds=301), timedelta(seconds=-301)])
def test_a_stale_or_future_signature_fails(skew: timedelta) -> None:
    header = _header(SECRET, BODY, NOW + skew)
    with pytest.raises(InvalidSignature, match="outside the tolerance"):
        verify_callback_signature(SECRET, header, BODY, now=NOW)
    # Within the tolerance the same header passes.
    verify_callback_signature(SECRET, _header(SECRET, BODY, NOW + skew / 2), BODY, now=NOW)
    verify_callback_signature(SECRET, header, BODY, now=NOW, tolerance_seconds=302)


def test_one_of_several_signatures_may_match() -> None:
    # A provider rotating its secret signs with the old and the new one.
    good = _header(SECRET, BODY, NOW)
    old = _header("old-secret", BODY, NOW).split(",")[1]
    verify_callback_signature(
        SECRET, f"{good.split(',')[0]},{old},{good.split(',')[1]}", BODY, now=NOW
    )


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "v1=abc",
        "t=now,v1=abc",
        f"t={int(NOW.timestamp())}",
        f"t={int(NOW.timestamp())},v1=\u00e9\u00e9",  # not even ASCII
    ],
)
def test_a_missing_or_malformed_header_fails(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_callback_signature(SECRET, header, BODY, now=NOW)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps(
            {"id": "ver_1", "reference": "onb_1", "status": "completed", "verdict": "maybe"}
        ).encode(),
    ],
)
def test_a_callback_that_is_no_verdict_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidCallback):
        parse_callback(body)


def test_a_progress_note_is_read_not_refused() -> None:
    note = json.dumps({"id": "ver_1", "reference": "onb_1", "status": "pending"}).encode()
    verification = parse_callback(note)
    assert (verification.status, verification.completed, verification.verdict) == (
        "pending",
        False,
        None,
    )


# -- the connector --------------------------------------------------------------------------

DOCUMENT = KycDocument(type="passport", number="CLEAR123", country="SE")
PERSON = KycPerson(given_name="Maria", family_name="Lindqvist", date_of_birth=date(1987, 4, 12))


def _provider(handler: httpx.MockTransport) -> KycProvider:
    return KycProvider(base_url="http://kyc.test", api_key="key-1", transport=handler)


async def test_start_sends_the_documented_request_and_reads_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            202,
            json={"id": "ver_9", "reference": "onb_9", "status": "pending", "verdict": None},
        )

    async with _provider(httpx.MockTransport(handle)) as kyc:
        verification = await kyc.start_verification(
            reference="onb_9",
            document=DOCUMENT,
            person=PERSON,
            idempotency_key="onb_9:kyc",
            callback_url="http://api.test/v1/kyc/callbacks",
        )
    assert verification.id == "ver_9"
    assert verification.status == "pending"
    assert not verification.completed
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/v1/verifications"
    assert request.headers["authorization"] == "Bearer key-1"
    assert request.headers["idempotency-key"] == "onb_9:kyc"
    assert json.loads(request.content) == {
        "reference": "onb_9",
        "document": {"type": "passport", "number": "CLEAR123", "country": "SE"},
        "person": {
            "given_name": "Maria",
            "family_name": "Lindqvist",
            "date_of_birth": "1987-04-12",
        },
        "callback_url": "http://api.test/v1/kyc/callbacks",
    }


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, KycRejected),
        (404, KycRejected),
        (409, KycRejected),
        (422, KycRejected),
        (429, KycRetryable),
        (500, KycRetryable),
        (503, KycRetryable),
    ],
)
async def test_answers_map_onto_the_error_taxonomy(status: int, error: type[Exception]) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": f"code_{status}", "message": "x"}})

    async with _provider(httpx.MockTransport(handle)) as kyc:
        with pytest.raises(error) as caught:
            await kyc.get_verification("ver_1")
    assert f"code_{status}" in str(caught.value)
    if error is KycRejected:
        assert isinstance(caught.value, BusinessRuleError)
        assert isinstance(caught.value, KycRejected)
        assert caught.value.status_code == status
    else:
        assert isinstance(caught.value, TransientError)


async def test_no_answer_is_retryable_and_names_no_person_data() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with _provider(httpx.MockTransport(handle)) as kyc:
        with pytest.raises(KycRetryable) as caught:
            await kyc.start_verification(
                reference="onb_1", document=DOCUMENT, person=PERSON, idempotency_key="k"
            )
    assert "ReadTimeout" in str(caught.value)
    for personal in ("Maria", "Lindqvist", "1987", "CLEAR123"):
        assert personal not in str(caught.value)


async def test_a_garbled_answer_is_retryable() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy error</html>")

    async with _provider(httpx.MockTransport(handle)) as kyc:
        with pytest.raises(KycRetryable, match="unexpected answer"):
            await kyc.get_verification("ver_1")


def test_the_connector_url_comes_from_settings() -> None:
    assert Settings().kyc_url == "http://127.0.0.1:8102"
    assert Settings(kyc_base_url="https://kyc.example/api").kyc_url == "https://kyc.example/api"
    assert Settings(kyc_port=9999).kyc_url == "http://127.0.0.1:9999"
