"""Webhook endpoints of apps: where the platform posts signed events (``infra.webhooks``).

Only callers with the ``app`` role (a client-credentials token, e.g. ``bfc-app``) manage
endpoints, and only their own: the token's client id owns what it registers; another
app's endpoint answers 404, exactly like a missing one.

URLs must be ``https://``; plain ``http://`` is accepted too while the setting
``webhooks_allow_http`` (``BFC_WEBHOOKS_ALLOW_HTTP``) is true, as it is by default for the
local stack, whose receivers listen on loopback. Production sets it to false.

Each endpoint is signed with a secret of its own, answered once at registration (``secret``,
``whsec_…``) and kept only encrypted: no app can sign for another. ``roll-secret`` gives an
endpoint a new one, answered once the same way; the one in use keeps signing next to it
(a second ``v1`` signature) until ``previous_secret_expires_at``, 24 hours unless the app
asks otherwise (0: at once, for a secret that leaked). With
``webhooks_allow_private_addresses`` false (production), an endpoint must be on a public
address (``infra/webhook_destinations.py``). A receiver's ``410`` disables its endpoint until
the app enables it again; what it missed meanwhile the app reads back from ``GET /v1/events``
(``api/routes/events.py``).

A request that breaks one rule answers 422 with that rule's ``code`` (``invalid_url``,
``unknown_event_type``); one that breaks several answers ``validation_failed``. Either
way ``errors`` lists every offending field with its own ``code``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Request, Response, status

from api.auth import Principal, require_role
from api.deps import EngineDep, SettingsDep
from api.errors import ProblemError, invalid_field, invalid_fields
from infra.webhook_destinations import parse_url, url_host_problem
from infra.webhook_store import MAX_ENDPOINTS_PER_CLIENT, EndpointLimitReached, WebhookStore
from infra.webhooks import new_signing_secret
from models.notifications import EVENT_TYPES, not_an_event_type
from models.webhook_schemas import (
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointPublic,
    WebhookSecretRoll,
)

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])

AppPrincipal = Annotated[Principal, require_role("app")]


async def get_webhook_store(engine: EngineDep, request: Request) -> WebhookStore:
    return WebhookStore(engine, request.app.state.cipher)


WebhookStoreDep = Annotated[WebhookStore, Depends(get_webhook_store)]


def url_problem(url: str, *, allow_http: bool, allow_private: bool = True) -> str | None:
    """Why ``url`` cannot receive webhooks, or None when it can."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "the URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: a bad one raises
    except ValueError as exc:
        return f"the URL cannot be parsed: {exc}"
    try:
        # As stored, the URL must parse for the sender too, whatever the configuration:
        # registered, one it cannot parse would fail every delivery.
        parse_url(urlunsplit(parts))
    except ValueError as exc:
        return str(exc)
    allowed = ("https", "http") if allow_http else ("https",)
    rules = [
        (
            parts.scheme in allowed,
            f"the URL must start with {' or '.join(f'{s}://' for s in allowed)}",
        ),
        (bool(parts.hostname), "the URL has no host"),
        (
            parts.username is None and parts.password is None,
            "the URL must not carry credentials",
        ),
        (not parts.fragment, "the URL must not have a fragment"),
    ]
    problem = next((message for ok, message in rules if not ok), None)
    if problem is None and not allow_private:
        problem = url_host_problem(url)
    return problem


def _invalid(errors: list[dict[str, str]]) -> ProblemError:
    return invalid_field(**errors[0]) if len(errors) == 1 else invalid_fields(errors)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookEndpointCreated)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate,
    principal: AppPrincipal,
    store: WebhookStoreDep,
    settings: SettingsDep,
) -> WebhookEndpointCreated:
    """Register an endpoint that receives the chosen event types, signed with a secret of
    its own: the answer's ``secret``, shown this once."""
    client_id = principal.own_client()
    errors: list[dict[str, Any]] = []
    problem = url_problem(
        body.url,
        allow_http=settings.webhooks_allow_http,
        allow_private=settings.webhooks_allow_private_addresses,
    )
    if problem is not None:
        errors.append({"field": "url", "code": "invalid_url", "message": problem})
    for index, event_type in enumerate(body.event_types):
        if event_type not in EVENT_TYPES:
            errors.append(
                {
                    "field": f"event_types.{index}",
                    "code": "unknown_event_type",
                    "message": not_an_event_type(event_type),
                }
            )
    if errors:
        raise _invalid(errors)
    secret = new_signing_secret()
    try:
        endpoint = await asyncio.to_thread(
            store.add_endpoint,
            client_id=client_id,
            # urlsplit lower-cases the scheme; the rest is kept as the app wrote it.
            url=urlunsplit(urlsplit(body.url)),
            event_types=list(dict.fromkeys(body.event_types)),
            created_by=principal.subject,
            signing_secret=secret,
        )
    except EndpointLimitReached as exc:
        raise ProblemError(
            422,
            "endpoint_limit_reached",
            f"An app may register {MAX_ENDPOINTS_PER_CLIENT} webhook endpoints",
            f"{exc}: delete one first",
        ) from exc
    return WebhookEndpointCreated(**WebhookEndpointPublic.of(endpoint).model_dump(), secret=secret)


@router.get("", response_model=WebhookEndpointList)
async def list_webhook_endpoints(
    principal: AppPrincipal, store: WebhookStoreDep
) -> WebhookEndpointList:
    """The calling app's endpoints (deleted ones are gone; disabled ones show enabled=false)."""
    endpoints = await asyncio.to_thread(store.list_endpoints, client_id=principal.own_client())
    return WebhookEndpointList(data=[WebhookEndpointPublic.of(e) for e in endpoints])


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_webhook_endpoint(
    endpoint_id: str, principal: AppPrincipal, store: WebhookStoreDep
) -> Response:
    """Delete one of the calling app's endpoints; it receives nothing from then on."""
    deleted = await asyncio.to_thread(
        store.delete_endpoint,
        client_id=principal.own_client(),
        endpoint_id=endpoint_id,
        deleted_by=principal.subject,
    )
    if not deleted:
        raise _not_found(endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{endpoint_id}/roll-secret", response_model=WebhookEndpointCreated)
async def roll_webhook_secret(
    endpoint_id: str,
    principal: AppPrincipal,
    store: WebhookStoreDep,
    body: WebhookSecretRoll | None = None,
) -> WebhookEndpointCreated:
    """A new signing secret for one of the calling app's endpoints, shown this once. The
    secret in use keeps signing next to it until ``previous_secret_expires_at``; rolled
    again meanwhile, only the new secret is replaced."""
    body = body or WebhookSecretRoll()
    secret = new_signing_secret()
    endpoint = await asyncio.to_thread(
        store.roll_secret,
        client_id=principal.own_client(),
        endpoint_id=endpoint_id,
        signing_secret=secret,
        keep_previous_for=timedelta(seconds=body.expire_previous_after_seconds),
        rolled_by=principal.subject,
    )
    if endpoint is None:
        raise _not_found(endpoint_id)
    return WebhookEndpointCreated(**WebhookEndpointPublic.of(endpoint).model_dump(), secret=secret)


@router.post("/{endpoint_id}/enable", response_model=WebhookEndpointPublic)
async def enable_webhook_endpoint(
    endpoint_id: str, principal: AppPrincipal, store: WebhookStoreDep
) -> WebhookEndpointPublic:
    """Enable one of the calling app's endpoints again, after a ``410 Gone`` from its
    receiver disabled it. It receives the events from now on, not those it missed."""
    endpoint = await asyncio.to_thread(
        store.enable_endpoint,
        client_id=principal.own_client(),
        endpoint_id=endpoint_id,
        enabled_by=principal.subject,
    )
    if endpoint is None:
        raise _not_found(endpoint_id)
    return WebhookEndpointPublic.of(endpoint)


def _not_found(endpoint_id: str) -> ProblemError:
    return ProblemError(404, "webhook_endpoint_not_found", "No such webhook endpoint", endpoint_id)
