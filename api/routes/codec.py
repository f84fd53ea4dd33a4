"""The Temporal codec server: the Web UI sends encrypted payloads here to show them.

``POST /codec/decode`` and ``/codec/encode`` speak Temporal's codec protocol (a JSON
``{"payloads": [...]}`` in the protobuf JSON mapping). Only operators and compliance
officers may decode, and every decode is written to the audit log: reading payloads is
reading customers' data. Browsers reach these routes only from the Temporal Web UI's
origin (see ``CodecCORS``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads

from api.auth import Principal, require_role
from api.deps import EngineDep
from api.errors import ProblemError
from infra.audit import write_audit_event
from infra.envelope import EnvelopeError
from infra.temporal import EnvelopePayloadCodec

router = APIRouter(prefix="/codec", tags=["codec"])

CodecReader = Annotated[Principal, require_role("operator", "compliance_officer")]


class CodecCORS(CORSMiddleware):
    """CORS for the codec routes only, and only for the Web UI's origins (with credentials)."""

    def __init__(self, app: ASGIApp, *, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_credentials=True,
            allow_methods=["POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Namespace"],
            max_age=600,
        )
        self._inner = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/codec/"):
            await super().__call__(scope, receive, send)
        else:
            await self._inner(scope, receive, send)


def _not_payloads(detail: str) -> ProblemError:
    return ProblemError(
        422, "validation_failed", "Not a payloads document", detail,
        errors=[{"field": "payloads", "code": "invalid", "message": detail}],
    )  # fmt: skip


async def _payloads(request: Request) -> Payloads:
    # JSON only: a browser sends another page's cross-origin JSON only after a preflight,
    # which CodecCORS answers for the Web UI alone, so the sign-in cookie cannot be used to
    # decode (and write audit rows) from a page of another origin on this host.
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ProblemError(
            415, "unsupported_media_type", "The codec takes JSON",
            "send Content-Type: application/json",
        )  # fmt: skip
    try:
        return json_format.Parse(await request.body(), Payloads())
    except (json_format.ParseError, ValueError) as exc:  # also bytes that are not UTF-8
        raise _not_payloads(str(exc)) from exc


def _codec(request: Request) -> EnvelopePayloadCodec:
    codec: EnvelopePayloadCodec = request.app.state.payload_codec
    return codec


@router.post("/decode")
async def decode(
    request: Request,
    principal: CodecReader,
    engine: EngineDep,
    namespace: Annotated[str, Header(alias="X-Namespace")] = "default",
) -> dict[str, Any]:
    """Decrypt payloads for a person allowed to read them; audited."""
    payloads = await _payloads(request)
    try:
        decoded = await _codec(request).decode(payloads.payloads)
    except EnvelopeError as exc:  # marked as ours, but not an envelope that opens
        raise _not_payloads(f"a payload does not decrypt: {exc}") from exc

    await asyncio.to_thread(
        write_audit_event,
        engine,
        actor=principal.subject,
        action="codec.decode",
        subject=f"namespace:{namespace}"[:100],
        details={"payloads": len(decoded), "username": principal.username},
    )
    return json_format.MessageToDict(Payloads(payloads=decoded))


@router.post("/encode")
async def encode(request: Request, principal: CodecReader) -> dict[str, Any]:
    """Encrypt payloads (the Web UI encodes what an operator sends, e.g. a signal)."""
    payloads = await _payloads(request)
    encoded = await _codec(request).encode(payloads.payloads)
    return json_format.MessageToDict(Payloads(payloads=encoded))
