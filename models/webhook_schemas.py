"""Request and response bodies of the webhook endpoint routes.

The shape is checked here; what depends on settings or on the list of event types (the
URL's scheme, unknown types) is checked by the route, which answers with a stable
``code`` per rule (``invalid_url``, ``unknown_event_type``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from models.notifications import PlatformEvent, WebhookEndpoint

MAX_URL_LENGTH = 2048
DEFAULT_PREVIOUS_SECRET_SECONDS = 24 * 3600
MAX_PREVIOUS_SECRET_SECONDS = 7 * 24 * 3600


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: StrictStr = Field(
        min_length=1, max_length=MAX_URL_LENGTH, examples=["https://app.example/hooks"]
    )
    event_types: list[StrictStr] = Field(
        min_length=1, max_length=50, examples=[["payment.succeeded", "payment.declined"]]
    )


class WebhookSecretRoll(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # How long the secret in use now keeps signing next to the new one: time for the app
    # to give its receivers the new secret. 0: it stops at once (it leaked).
    expire_previous_after_seconds: int = Field(
        default=DEFAULT_PREVIOUS_SECRET_SECONDS, ge=0, le=MAX_PREVIOUS_SECRET_SECONDS
    )


class WebhookEndpointPublic(BaseModel):
    id: str
    url: str
    event_types: list[str]
    enabled: bool
    created_at: datetime
    # Set while a rolled-over secret still signs next to the current one.
    previous_secret_expires_at: datetime | None = None

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointPublic:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            event_types=endpoint.event_types,
            enabled=endpoint.enabled,
            created_at=endpoint.created_at,
            previous_secret_expires_at=endpoint.previous_secret_expires_at,
        )


class WebhookEndpointCreated(WebhookEndpointPublic):
    """The answer to a registration or a secret roll: the endpoint, with its signing secret,
    shown this once (it is kept only encrypted; an app that loses it rolls it again)."""

    secret: str


class WebhookEndpointList(BaseModel):
    data: list[WebhookEndpointPublic]


class EventPublic(BaseModel):
    """An event as its webhook carried it: the same four fields, so an app that reads back
    what it missed hands it to the same handler."""

    id: str
    type: str
    created_at: str  # ISO 8601 UTC, the text the webhook body carried
    data: dict[str, Any]

    @classmethod
    def of(cls, event: PlatformEvent) -> EventPublic:
        return cls(id=event.id, type=event.type, created_at=event.created_at, data=event.data)


class EventList(BaseModel):
    data: list[EventPublic]
    next_cursor: str | None
