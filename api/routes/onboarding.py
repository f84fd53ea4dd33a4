"""Onboarding over REST: an app applies for a person, sends documents, reads the status;
operators resend reminders or cancel.

``POST /v1/onboarding`` is for ``app`` clients and needs an ``Idempotency-Key`` (scoped to
the app). The personal data is stored encrypted (``customers.pii``) before the
OnboardingWorkflow starts with ids only. The app that applied sees the status and what is
missing; operators and compliance officers also see the risk tier, the KYC verdict and the
screening. Someone else's application answers 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal, require_role
from api.deps import (
    IdempotencyHeader,
    TemporalClientDep,
    require_idempotency_key,
    temporal_or_503,
)
from api.errors import ProblemError, invalid_fields, unavailable
from api.onboarding_starter import ApplicationStarter
from api.workflow_calls import live_view
from infra.onboarding_store import OnboardingStore, StoredApplication
from models.contracts import Address, PersonalData
from models.ids import new_id
from models.onboarding import (
    CANCEL_SIGNAL,
    GET_APPLICATION_QUERY,
    RESEND_REMINDER_SIGNAL,
    TERMINAL_ONBOARDING,
    CancelApplication,
    OnboardingState,
)
from models.onboarding_schemas import (
    ApplicationCreate,
    ApplicationForStaff,
    ApplicationPublic,
    CancelCreate,
    DocumentIn,
    ScreeningPublic,
)

router = APIRouter(prefix="/v1/onboarding", tags=["onboarding"])
ACCEPTED = status.HTTP_202_ACCEPTED

App = Annotated[Principal, require_role("app")]
Reader = Annotated[Principal, require_role("app", "operator", "admin", "compliance_officer")]
Operator = Annotated[Principal, require_role("operator", "admin")]


def _store(request: Request) -> OnboardingStore:
    store: OnboardingStore = request.app.state.onboarding
    return store


def _staff_view(principal: Principal) -> bool:
    return principal.is_staff or "compliance_officer" in principal.roles


def _starter(request: Request) -> ApplicationStarter:
    starter: ApplicationStarter = request.app.state.application_starter
    return starter


def _visible(
    principal: Principal, application: StoredApplication | None, onboarding_id: str
) -> StoredApplication:
    if application is not None and (
        _staff_view(principal) or application.client_id == principal.own_client()
    ):
        return application
    raise ProblemError(
        404, "onboarding_not_found", "No such application", f"no application {onboarding_id}"
    )


def _fingerprint(body: ApplicationCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _personal_data(body: ApplicationCreate) -> PersonalData:
    a = body.address
    return PersonalData(
        given_name=body.given_name,
        family_name=body.family_name,
        date_of_birth=body.date_of_birth.isoformat(),
        email=str(body.email),
        phone=body.phone,
        address=Address(
            line1=a.line1,
            line2=a.line2,
            city=a.city,
            postal_code=a.postal_code,
            country=a.country,
        ),
        document_type=body.document.type if body.document else "",
        document_number=body.document.number if body.document else "",
    )


def _view(
    principal: Principal, application: StoredApplication, live: OnboardingState | None
) -> ApplicationPublic | ApplicationForStaff:
    status_ = live.status if live else application.status
    missing = list(live.missing) if live else list(application.missing or [])
    waiting_for = (live.waiting_for or None) if live else None
    if not _staff_view(principal):
        # The app: status and what is missing. Why an application waits for a compliance
        # officer, or what screening found, is not the applicant's side's business.
        return ApplicationPublic(
            id=application.id,
            status=status_,
            missing=missing,
            waiting_for=waiting_for if status_ != "in_review" else "a decision",
            created_at=application.created_at,
            completed_at=application.completed_at,
        )
    screening = live.screening if live and live.screening else None
    stored = application.screening
    return ApplicationForStaff(
        id=application.id,
        status=status_,
        missing=missing,
        waiting_for=waiting_for,
        created_at=application.created_at,
        completed_at=application.completed_at,
        customer_id=application.customer_id,
        user_id=(live.user_id if live else None) or application.user_id,
        risk_tier=(live.risk_tier if live else None) or application.risk_tier,
        risk_reasons=(live.risk_reasons if live else None) or list(application.risk_reasons or []),
        kyc_verdict=(live.kyc_verdict if live else None) or application.kyc_verdict,
        screening=(
            ScreeningPublic(**screening.__dict__)
            if screening is not None
            else ScreeningPublic(**stored)
            if stored
            else None
        ),
        review_id=(live.review_id if live else None) or application.review_id,
        decision_reason=(live.decision_reason if live else None) or application.decision_reason,
        wallet_account_id=(live.wallet_account_id if live else None)
        or application.wallet_account_id,
    )


async def _live(client: Client | None, application: StoredApplication) -> OnboardingState | None:
    if client is None or application.status in TERMINAL_ONBOARDING:
        return None
    return await live_view(
        client.get_workflow_handle(application.id), GET_APPLICATION_QUERY, OnboardingState
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ApplicationPublic,
    response_model_exclude_none=True,
)
async def apply(
    body: ApplicationCreate,
    request: Request,
    response: Response,
    principal: App,
    key: IdempotencyHeader = None,
) -> ApplicationPublic:
    """An app applies for a person; the platform verifies, screens and decides."""
    key = require_idempotency_key(key)
    problems = body.residence_problems()
    if problems:
        raise invalid_fields(problems)
    application, created = await asyncio.to_thread(
        _store(request).apply,
        onboarding_id=new_id("onb"),
        customer_id=new_id("cus"),
        client_id=principal.own_client(),
        scope=principal.subject,
        key=key,
        request_hash=_fingerprint(body),
        data=_personal_data(body),
        country=body.country,
        currency=body.currency,
        documents_provided=body.document is not None,
    )
    # The committed application is the promise: with Temporal away the answer is still 202
    # and the sweep starts it once it is back (api/onboarding_starter.py).
    if application.status == "received" and application.saga_started_at is None:
        await _starter(request).start(application)
    response.headers["Location"] = f"/v1/onboarding/{application.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    view = _view(principal, application, None)
    return ApplicationPublic(**view.model_dump(include=set(ApplicationPublic.model_fields)))


@router.get("/{onboarding_id}", response_model=None)
async def get_application(
    onboarding_id: str, request: Request, principal: Reader, temporal: TemporalClientDep
) -> ApplicationPublic | ApplicationForStaff:
    """The status and what is missing (staff: also risk tier, KYC verdict and screening)."""
    application = _visible(
        principal, await asyncio.to_thread(_store(request).get, onboarding_id), onboarding_id
    )
    return _view(principal, application, await _live(temporal, application))


@router.post(
    "/{onboarding_id}/documents", status_code=status.HTTP_202_ACCEPTED, response_model=None
)
async def add_document(
    onboarding_id: str,
    body: DocumentIn,
    request: Request,
    principal: App,
    temporal: TemporalClientDep,
) -> ApplicationPublic | ApplicationForStaff:
    """The identity document an application is missing; stored encrypted, then the
    application continues. Stored is accepted: with Temporal away, the API's sweep tells
    the application's workflow once it is back (``api/onboarding_starter.py``)."""
    await _open_application(request, principal, onboarding_id)
    application = await asyncio.to_thread(
        _store(request).add_document, onboarding_id, body.type, body.number
    )
    told = await _starter(request).tell_documents(onboarding_id, body.type)
    # Not told: Temporal is away, a query would only wait as long again.
    return _view(principal, application, await _live(temporal, application) if told else None)


async def _signal(
    request: Request,
    principal: Principal,
    temporal: Client | None,
    onboarding_id: str,
    *,
    name: str,
    arg: object,
) -> ApplicationPublic | ApplicationForStaff:
    application = await _open_application(request, principal, onboarding_id)
    client = temporal_or_503(temporal)
    try:
        await client.get_workflow_handle(onboarding_id).signal(name, arg)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise  # Temporal away: 503 (api.errors)
        if application.saga_started_at is None:
            # Accepted while Temporal was away: the API's sweep starts it shortly.
            raise unavailable(
                "onboarding_not_started", "The application has not started yet",
                "its workflow starts within moments; send the request again",
            ) from exc  # fmt: skip
        # Its workflow ended without a decision on the row (an operator terminated it).
        raise ProblemError(
            409, "onboarding_closed", "The application is closed",
            f"application {onboarding_id} is no longer running",
        ) from exc  # fmt: skip
    return _view(principal, application, await _live(client, application))


async def _open_application(
    request: Request, principal: Principal, onboarding_id: str
) -> StoredApplication:
    """The caller's application, still open: 404 if it is not theirs, 409 once decided."""
    application = _visible(
        principal, await asyncio.to_thread(_store(request).get, onboarding_id), onboarding_id
    )
    if application.status in TERMINAL_ONBOARDING:
        raise ProblemError(
            409, "onboarding_closed", "The application is closed",
            f"application {onboarding_id} is {application.status}",
        )  # fmt: skip
    return application


@router.post(
    "/{onboarding_id}/reminders", status_code=status.HTTP_202_ACCEPTED, response_model=None
)
async def resend_reminder(
    onboarding_id: str, request: Request, principal: Operator, temporal: TemporalClientDep
) -> ApplicationPublic | ApplicationForStaff:
    """Send the applicant another reminder of what is missing (operators)."""
    return await _signal(
        request, principal, temporal, onboarding_id, name=RESEND_REMINDER_SIGNAL, arg=None
    )


@router.post("/{onboarding_id}/cancel", status_code=ACCEPTED, response_model=None)
async def cancel_application(
    onboarding_id: str,
    body: CancelCreate,
    request: Request,
    principal: Operator,
    temporal: TemporalClientDep,
) -> ApplicationPublic | ApplicationForStaff:
    """Cancel an application before it is decided (operators); who asked and why are
    audited (``onboarding.cancel_requested``) once the application has been told."""
    arg = CancelApplication(actor=principal.subject, reason=body.reason)
    answer = await _signal(request, principal, temporal, onboarding_id, name=CANCEL_SIGNAL, arg=arg)
    # The workflow records only that it was canceled: the operator and their reason are
    # here. (After its decision the workflow ignores a cancel; the request is still audited.)
    await asyncio.to_thread(
        _store(request).audit,
        actor=principal.subject,
        action="onboarding.cancel_requested",
        subject=onboarding_id,
        reason=body.reason,
    )
    return answer
