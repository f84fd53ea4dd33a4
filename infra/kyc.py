"""The KYC provider connector, and the check of the provider's signed callbacks.

Wire protocol (locally spoken by ``infra/sandbox/kyc_provider.py``; a real provider is
another ``kyc_base_url`` and key)::

    POST /v1/verifications        Authorization: Bearer <kyc.api_key>, Idempotency-Key
         {"reference", "document": {"type", "number", "country"},
          "person": {"given_name", "family_name", "date_of_birth"}, "callback_url"}
         -> 202 {"id": "ver_…", "status": "pending", …}
    GET  /v1/verifications/{id}   -> 200 {"id", "reference", "status", "verdict", "checks",
                                          "created_at", "completed_at"}
    errors: {"error": {"code", "message"}} with 400/401/404/409/422, 429 or 5xx

    callback: POST <callback_url> {"id", "reference", "status": "completed", "verdict",
              "checks", "completed_at"}
              KYC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

Starting is idempotent by the caller's key (onboarding id + step): after a timeout the same
call is simply made again. Error messages name the operation and the provider's error code,
never the person's data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any, cast

import httpx

from infra.settings import Settings
from models.kyc import (
    CHECK_OUTCOMES,
    STATUSES,
    VERDICTS,
    CheckOutcome,
    KycDocument,
    KycError,
    KycPerson,
    KycRejected,
    KycRetryable,
    KycStatus,
    KycVerdict,
    KycVerification,
)

SIGNATURE_HEADER = "KYC-Signature"
DEFAULT_SIGNATURE_TOLERANCE_SECONDS = 300


class InvalidSignature(KycError):
    """A callback that does not prove it comes from the provider: ignore it (answer 401)."""


class InvalidCallback(KycError):
    """A correctly signed callback whose body is not a verification result."""


class KycProvider:
    """Talks to the provider's API. One instance per process; close it with ``aclose``."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout_seconds: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout_seconds,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, api_key: str) -> KycProvider:
        """``api_key`` is the Vault secret ``kyc.api_key`` (infra.vault.load_platform_secrets)."""
        return cls(
            base_url=settings.kyc_url,
            api_key=api_key,
            timeout_seconds=settings.kyc_timeout_seconds,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> KycProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start_verification(
        self,
        *,
        reference: str,
        document: KycDocument,
        person: KycPerson,
        idempotency_key: str,
        callback_url: str | None = None,
    ) -> KycVerification:
        """Ask for a document and identity check; the verdict comes later (callback or poll).

        ``callback_url`` None leaves it to the provider's configured default.
        """
        body: dict[str, Any] = {
            "reference": reference,
            "document": {
                "type": document.type,
                "number": document.number,
                "country": document.country,
            },
            "person": {
                "given_name": person.given_name,
                "family_name": person.family_name,
                "date_of_birth": person.date_of_birth.isoformat(),
            },
        }
        if callback_url is not None:
            body["callback_url"] = callback_url
        return await self._call(
            "POST",
            "/v1/verifications",
            what="start verification",
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )

    async def get_verification(self, verification_id: str) -> KycVerification:
        return await self._call(
            "GET", f"/v1/verifications/{verification_id}", what="get verification"
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> KycVerification:
        try:
            response = await self._client.request(method, path, json=json, headers=headers)
        except httpx.TransportError as exc:  # timeouts, refused connections, broken streams
            raise KycRetryable(f"kyc {what}: {type(exc).__name__}") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise KycRetryable(f"kyc {what}: provider answered {status} {_error_code(response)}")
        if status >= 400:
            raise KycRejected(
                f"kyc {what}: provider refused with {status} {_error_code(response)}",
                status_code=status,
            )
        try:
            return verification_from_json(response.json())
        except ValueError as exc:
            raise KycRetryable(f"kyc {what}: unexpected answer ({exc})") from exc


def _error_code(response: httpx.Response) -> str:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "(no error code)"
    return str(code)


def verification_from_json(data: object) -> KycVerification:
    """A verification as the provider's API or callback shows it; ValueError if it is not one."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    ver_id, reference, status = data.get("id"), data.get("reference"), data.get("status")
    if not isinstance(ver_id, str) or not ver_id:
        raise ValueError("id missing")
    if not isinstance(reference, str):
        raise ValueError("reference missing")
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    verdict = data.get("verdict")
    if verdict is not None and verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    checks = data.get("checks") or {}
    if not isinstance(checks, dict) or not all(
        isinstance(k, str) and v in CHECK_OUTCOMES for k, v in checks.items()
    ):
        raise ValueError("checks are not name -> pass|fail|inconclusive")
    completed_at = data.get("completed_at")
    if completed_at is not None and not isinstance(completed_at, str):
        raise ValueError("completed_at is not a timestamp")
    if status == "completed" and verdict is None:
        raise ValueError("completed without a verdict")
    return KycVerification(
        id=ver_id,
        reference=reference,
        status=cast(KycStatus, status),
        verdict=cast(KycVerdict | None, verdict),
        checks=cast(dict[str, CheckOutcome], dict(checks)),
        completed_at=_timestamp(completed_at) if completed_at else None,
    )


def _timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return parsed


def parse_callback(body: bytes) -> KycVerification:
    """The verification in a callback body, completed or still a progress note (which the
    provider may send too, and must be acknowledged); call only after
    ``verify_callback_signature``."""
    try:
        return verification_from_json(json.loads(body))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidCallback(f"kyc callback: {exc}") from exc


def verify_callback_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: datetime,
    tolerance_seconds: int = DEFAULT_SIGNATURE_TOLERANCE_SECONDS,
) -> None:
    """Raise InvalidSignature unless ``header`` signs exactly ``body`` with ``secret``,
    at a time within ``tolerance_seconds`` of ``now`` (either way: clocks drift).

    The time is part of what is signed, so an old callback cannot be replayed later with a
    fresh time. Several ``v1=`` values are accepted (a provider rotating its secret sends
    one per secret); each is compared in constant time.
    """
    if not header:
        raise InvalidSignature(f"kyc callback: no {SIGNATURE_HEADER} header")
    timestamp: str | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not timestamp.isdigit() or not signatures:
        raise InvalidSignature(f"kyc callback: malformed {SIGNATURE_HEADER} header")
    if abs(now.timestamp() - int(timestamp)) > tolerance_seconds:
        raise InvalidSignature("kyc callback: signature timestamp outside the tolerance")
    expected = (
        hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        .hexdigest()
        .encode()
    )
    # No short-circuit: every candidate is compared, each in constant time (as bytes: a
    # header may carry characters compare_digest refuses in a str).
    matches = [
        hmac.compare_digest(expected, candidate.encode(errors="replace"))
        for candidate in signatures
    ]
    if not any(matches):
        raise InvalidSignature("kyc callback: signature does not match")
