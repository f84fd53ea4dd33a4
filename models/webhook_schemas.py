"""Request and response bodies of the webhook endpoint routes.

The shape is checked here; what depends on settings or on the list of event types (the
URL's scheme, unknown types) is checked by the route, which answers with a stable
``code`` per rule (``invalid_url``, ``unknown_event_type``).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from models.notifications import WebhookEndpoint

MAX_URL_LENGTH = 2048


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: StrictStr = Field(
        min_length=1, max_length=MAX_URL_LENGTH, examples=["https://app.example/hooks"]
    )
    event_types: list[StrictStr] = Field(
        min_length=1, max_length=50, examples=[["payment.succeeded", "payment.declined"]]
    )


class WebhookEndpointPublic(BaseModel):
    id: str
    url: str
    event_types: list[str]
    enabled: bool
    created_at: datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointPublic:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            event_types=endpoint.event_types,
            enabled=endpoint.enabled,
            created_at=endpoint.created_at,
        )


class WebhookEndpointCreated(WebhookEndpointPublic):
    """The answer to a registration: the endpoint, with its signing secret, shown this once
    (it is kept only encrypted; an app that loses it registers the endpoint again)."""

    secret: str


class WebhookEndpointList(BaseModel):
    data: list[WebhookEndpointPublic]
