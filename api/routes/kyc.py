"""The KYC provider's webhook: ``POST /v1/kyc/callbacks``.

Not for bearer tokens: the provider signs each callback (``KYC-Signature: t=…,v1=…``,
HMAC-SHA256 over the timestamp and the raw body with the Vault secret
``kyc.webhook_signing_secret``). A bad or stale signature is 401 and changes nothing; a valid
verdict becomes a signal to the application's OnboardingWorkflow. Answering 2xx tells the
provider to stop retrying, so a callback for an application that is already decided is
acknowledged too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from temporalio.service import RPCError, RPCStatusCode

from api.deps import TemporalClientDep, temporal_or_503
from api.errors import ProblemError
from infra.kyc import (
    SIGNATURE_HEADER,
    InvalidCallback,
    InvalidSignature,
    parse_callback,
    verify_callback_signature,
)
from models.onboarding import KYC_VERDICT_SIGNAL, KycVerdictSignal

router = APIRouter(prefix="/v1/kyc", tags=["kyc"])


@router.post("/callbacks", status_code=200)
async def kyc_callback(request: Request, temporal: TemporalClientDep) -> dict[str, bool]:
    """A verdict from the KYC provider (signed by the provider, not a bearer token)."""
    body = await request.body()
    secret: str = request.app.state.kyc_webhook_secret
    try:
        verify_callback_signature(
            secret, request.headers.get(SIGNATURE_HEADER, ""), body, now=datetime.now(UTC)
        )
    except InvalidSignature as exc:
        raise ProblemError(401, "invalid_signature", "Signature check failed", str(exc)) from exc
    try:
        verification = parse_callback(body)
    except InvalidCallback as exc:
        raise ProblemError(400, "invalid_callback", "Unreadable callback", str(exc)) from exc
    if not verification.completed or verification.verdict is None:
        return {"received": True}  # a progress note; the verdict comes later
    client = temporal_or_503(temporal)
    signal = KycVerdictSignal(
        verification_id=verification.id,
        verdict=verification.verdict,
        checks=dict(verification.checks),
    )
    try:
        await client.get_workflow_handle(verification.reference).signal(KYC_VERDICT_SIGNAL, signal)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        # No running application under that reference (decided, or not ours): nothing to do.
    return {"received": True}
