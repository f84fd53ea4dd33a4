"""An app's events, read back: what its webhooks carried, or would have.

A webhook is retried for days, but an app whose receiver was away longer, or whose endpoint
was disabled (a 410) or not yet registered, missed events. ``GET /v1/events`` lists the
app's own events newest first, with the webhook's body for each; ``delivery_success=false``
keeps those no endpoint of the app accepted, ``created[gte]`` those since a moment, ``type``
one event type. ``GET /v1/events/{id}`` reads one. Only ``app`` callers, and only their own
events: another app's event answers 404, exactly like a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.auth import Principal, require_role
from api.errors import ProblemError, invalid_field
from infra.event_log import EventLog
from models.notifications import EVENT_TYPES, not_an_event_type
from models.webhook_schemas import EventList, EventPublic

router = APIRouter(prefix="/v1/events", tags=["webhooks"])

AppPrincipal = Annotated[Principal, require_role("app")]
EVENT_ID = r"^evt_[0-9A-Za-z_-]{1,96}$"


def _events(request: Request) -> EventLog:
    events: EventLog = request.app.state.events
    return events


@router.get("", response_model=EventList)
async def list_events(  # noqa: PLR0917 - FastAPI passes query parameters by name
    request: Request,
    principal: AppPrincipal,
    type_: Annotated[str | None, Query(alias="type", max_length=60)] = None,
    created_gte: Annotated[datetime | None, Query(alias="created[gte]")] = None,
    delivery_success: bool | None = None,
    cursor: Annotated[str | None, Query(pattern=EVENT_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> EventList:
    """Your events, newest first; ``next_cursor`` pages. ``delivery_success=false``: the
    events no endpoint of yours accepted (none was subscribed, or every attempt failed)."""
    if type_ is not None and type_ not in EVENT_TYPES:
        raise invalid_field("type", "unknown_event_type", not_an_event_type(type_))
    if created_gte is not None and created_gte.tzinfo is None:
        raise invalid_field(
            "created[gte]",
            "timezone_required",
            "give the moment with its offset, e.g. 2026-12-03T10:00:00Z",
        )
    rows = await _events(request).page(
        client_id=principal.own_client(),
        event_type=type_,
        created_gte=created_gte,
        delivered=delivery_success,
        before=cursor,
        limit=limit + 1,
    )
    page = rows[:limit]
    return EventList(
        data=[EventPublic.of(event) for event in page],
        next_cursor=page[-1].id if len(rows) > limit and page else None,
    )


@router.get("/{event_id}", response_model=EventPublic)
async def get_event(event_id: str, request: Request, principal: AppPrincipal) -> EventPublic:
    """One of your events, as its webhook carried it."""
    event = await _events(request).find(client_id=principal.own_client(), event_id=event_id)
    if event is None:
        raise ProblemError(404, "event_not_found", "No such event", f"no event {event_id}")
    return EventPublic.of(event)
