"""Compliance review cases for officers: the queue, a case, decisions, assignment.

The queue comes from Temporal visibility (search attributes ``ReviewStatus``, ``ReviewKind``,
``ReviewDueAt``), not from a read model: the case workflow is the one source of truth. A
case's details come from its ``get_case`` query; decisions are Updates whose validators
answer synchronously (refusals map to 403/409 with the workflow's reason).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from keycloak.exceptions import KeycloakError
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal, require_role
from api.deps import TemporalClientDep, temporal_or_503
from api.errors import ProblemError, invalid_fields, keycloak_unavailable
from api.workflow_calls import ask, update
from infra.identity import IdentityDirectory
from models.review import (
    OFFICER_ROLE,
    REVIEW_WORKFLOW,
    SUPERVISOR_ROLE,
    Actor,
    AssignInput,
    DecideInput,
    ReviewState,
)

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])

Officer = Annotated[Principal, require_role("compliance_officer")]
Reader = Annotated[Principal, require_role("compliance_officer", "operator")]

OPEN_STATUSES = ("open", "escalated", "info_requested")
CLOSED_STATUSES = ("approved", "rejected")
_REFUSALS = {
    "NotAnOfficer": (403, "not_an_officer"),
    "OwnCase": (403, "own_case"),
    "NotASupervisor": (403, "not_a_supervisor"),
    "AlreadyApproved": (409, "already_approved"),
    "CaseClosed": (409, "case_closed"),
    # Temporal's: the case ended (withdrawn) while it was taking this decision.
    "AcceptedUpdateCompletedWorkflow": (409, "case_closed"),
}


class ReviewSummary(BaseModel):
    review_id: str
    kind: str | None
    status: str | None
    assignee: str | None
    due_at: datetime | None
    escalations: int | None


class ReviewQueue(BaseModel):
    data: list[ReviewSummary]
    next_cursor: str | None


class DecisionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject", "request_info"]
    reason: str = Field(min_length=3, max_length=1000)


class AssignCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignee: str | None = Field(
        default=None, min_length=1, max_length=64, description="default: yourself"
    )


def _actor(principal: Principal) -> Actor:
    return Actor(
        subject=principal.subject, username=principal.username, roles=sorted(principal.roles)
    )


@router.get("", response_model=ReviewQueue)
async def list_reviews(  # noqa: PLR0917 - FastAPI passes query parameters by name
    principal: Reader,
    temporal: TemporalClientDep,
    status: Literal["open", "closed"] = "open",
    kind: Literal["payment", "onboarding"] | None = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,6}$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ReviewQueue:
    """Open cases, the earliest due first; or closed (decided) cases, the newest first.
    From Temporal visibility."""
    client = temporal_or_503(temporal)
    start = int(cursor or 0)
    statuses: tuple[str, ...]
    if status == "open":
        # Running only: a case withdrawn with its payment keeps its last ReviewStatus. All
        # of them: visibility lists the newest first, so a bound would drop the most overdue.
        statuses, execution_status, read = OPEN_STATUSES, "Running", None
    else:
        # A decided case's workflow has completed. Newest first, as visibility lists them;
        # only as many as this page needs (closed cases accumulate without end).
        statuses, execution_status, read = CLOSED_STATUSES, "Completed", start + limit + 1
    wanted = ", ".join(f"'{name}'" for name in statuses)
    query = (
        f"WorkflowType = '{REVIEW_WORKFLOW}' AND ExecutionStatus = '{execution_status}' "
        f"AND ReviewStatus IN ({wanted})"
    )
    if kind is not None:
        query += f" AND ReviewKind = '{kind}'"
    cases: list[ReviewSummary] = []
    async for execution in client.list_workflows(query, limit=read):
        attributes = execution.typed_search_attributes
        cases.append(
            ReviewSummary(
                review_id=execution.id,
                kind=attributes.get(SearchAttributeKey.for_keyword("ReviewKind")),
                status=attributes.get(SearchAttributeKey.for_keyword("ReviewStatus")),
                assignee=attributes.get(SearchAttributeKey.for_keyword("ReviewAssignee")),
                due_at=attributes.get(SearchAttributeKey.for_datetime("ReviewDueAt")),
                escalations=attributes.get(SearchAttributeKey.for_int("ReviewEscalations")),
            )
        )
    if status == "open":
        cases.sort(
            key=lambda c: (
                c.due_at is None,
                c.due_at or datetime.max.replace(tzinfo=UTC),
                c.review_id,
            )
        )
    page = cases[start : start + limit]
    more = start + limit < len(cases)
    return ReviewQueue(data=page, next_cursor=str(start + limit) if more else None)


async def _case(client: Client, review_id: str) -> ReviewState:
    handle = client.get_workflow_handle(review_id)
    try:
        description = await handle.describe()
        if description.workflow_type != REVIEW_WORKFLOW:
            raise ProblemError(404, "review_not_found", "No such review", review_id)
        state = await ask(handle, "get_case", ReviewState)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ProblemError(404, "review_not_found", "No such review", review_id) from exc
        raise
    return state


@router.get("/{review_id}", response_model=None)
async def get_review(review_id: str, principal: Reader, temporal: TemporalClientDep) -> ReviewState:
    """The case: subject, reasons, evidence, history of decisions, due time."""
    return await _case(temporal_or_503(temporal), review_id)


async def _update(
    client: Client, review_id: str, name: str, arg: object, key: str | None
) -> ReviewState:
    await _case(client, review_id)  # 404 before anything else
    handle = client.get_workflow_handle(review_id)
    try:
        state = await update(handle, name, arg, update_id=key, result_type=ReviewState)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type in _REFUSALS:
            status, code = _REFUSALS[cause.type]
            raise ProblemError(status, code, "The case refused this", cause.message) from exc
        raise
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise  # Temporal away: 503 (api.errors)
        # The workflow has completed: the case is closed.
        raise ProblemError(
            409, "case_closed", "The case refused this", "the case is closed"
        ) from exc
    return state


@router.post("/{review_id}/decision", response_model=None)
async def decide(
    review_id: str,
    body: DecisionCreate,
    principal: Officer,
    temporal: TemporalClientDep,
    key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> ReviewState:
    """Approve, reject or ask for information; answers with the case after the decision."""
    request = DecideInput(actor=_actor(principal), reason=body.reason)
    # The key becomes the update's id, which the case de-duplicates: scoped to the caller
    # (as every key of ours is), or a second officer who happened to send the same key
    # would be answered with the first one's decision and have their own dropped.
    update_id = f"{principal.subject}:{key}" if key else None
    state = await _update(temporal_or_503(temporal), review_id, body.decision, request, update_id)
    # Under a used key the case answers the first request's result without looking at this
    # one: a different decision or reason sent under it was not applied, and must not
    # be answered as if it had been.
    if update_id is not None and not any(
        (entry.actor, entry.decision, entry.reason)
        == (principal.subject, body.decision, body.reason)
        for entry in state.history
    ):
        raise ProblemError(
            409,
            "idempotency_key_reused",
            "Idempotency-Key reused with a different request",
            "this key carried another decision on this case; send a new Idempotency-Key",
        )
    return state


@router.post("/{review_id}/assign", response_model=None)
async def assign(
    review_id: str,
    body: AssignCreate,
    principal: Officer,
    temporal: TemporalClientDep,
    request: Request,
) -> ReviewState:
    """Take the case, or (supervisor) hand it to another officer."""
    assignee = body.assignee or principal.subject
    if assignee != principal.subject and SUPERVISOR_ROLE in principal.roles:
        # The case's validator decides who may assign; whether the assignee is an officer
        # only Keycloak knows, and a workflow cannot ask it. A case handed to a mistyped id
        # or to someone who cannot decide it would sit until its SLA escalated it.
        await _require_officer(request.app.state.identity, assignee)
    change = AssignInput(actor=_actor(principal), assignee=assignee)
    return await _update(temporal_or_503(temporal), review_id, "assign", change, None)


async def _require_officer(directory: IdentityDirectory, subject: str) -> None:
    try:
        officer = await asyncio.to_thread(directory.holds_role, subject, OFFICER_ROLE)
    except KeycloakError as exc:
        raise keycloak_unavailable() from exc
    if not officer:
        message = f"{subject} is not a user with the role {OFFICER_ROLE}"
        raise invalid_fields(
            [{"field": "assignee", "code": "not_an_officer", "message": message}],
            code="assignee_not_an_officer",
        )
