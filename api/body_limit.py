"""A bound on request bodies: ``413 payload_too_large`` past it, before a route reads more.

Every body of ours is small JSON (a payment is a few hundred bytes), but a route that reads
its body takes it whole into memory, and one route answers without a token (the KYC
provider's signed callbacks: the signature is checked after the body is read). A declared
``Content-Length`` over the bound is refused at once; a body sent in chunks is counted as it
arrives and refused when it passes the bound. The codec routes (operators decoding a
workflow's payloads for the Web UI) take more: a payload alone may be 2 MB.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
CODEC_MAX_BODY_BYTES = 32 * 1024 * 1024


class _TooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so that a route reading its body passes it
    on (FastAPI turns other errors while reading a body into a 400) and the problem
    handlers answer it; raised outside the routes (another middleware reading), it is
    answered here."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is too large: at most {limit} bytes")


class LimitRequestBodies:
    """ASGI middleware: at most ``max_bytes`` of body per request (``/codec/``: more)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        codec_max_bytes: int = CODEC_MAX_BODY_BYTES,
    ) -> None:
        self._app = app
        self._max = max_bytes
        self._codec_max = codec_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._codec_max if scope["path"].startswith("/codec/") else self._max
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(scope, receive, send, _TooLarge(limit))
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, counted, watched)
        except _TooLarge as exc:
            if started:  # too late for an answer of our own; the connection just ends
                raise
            await _refuse(scope, receive, send, exc)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: _TooLarge) -> None:
    response = problem_response(
        413,
        "payload_too_large",
        exc.detail,
        instance=scope["path"].replace("\x00", "\\u0000"),
    )
    await response(scope, receive, send)
