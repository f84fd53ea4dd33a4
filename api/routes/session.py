"""Sign-in for people in the Temporal Web UI, so its codec calls carry who they are.

The dev server's Web UI has no login of its own to pass a token from. An operator opens
``/auth/login?next=<a Web UI page>``; the API sends them to Keycloak (authorization code
with PKCE, public client ``bfc-web``), takes the code back at ``/auth/callback``, and sets
the access token as a short-lived HttpOnly cookie scoped to ``/codec``. The Web UI sends it
when its codec setting "Include cross-origin credentials" is on: UI (:8233) and API (:8000)
on one host are same-site, so a SameSite=Lax cookie goes along, and CORS admits only the
UI's origins. The login state (PKCE verifier, state, next) travels in a signed cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Annotated
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import APIRouter, Cookie, Query, Request
from fastapi.responses import RedirectResponse

from api.auth import SESSION_COOKIE
from api.errors import ProblemError, keycloak_unavailable
from infra.keycloak import InvalidToken, IssuerUnreachable, TokenVerifier, token_endpoint
from infra.settings import Settings

router = APIRouter(prefix="/auth", tags=["session"])

LOGIN_COOKIE = "bfc_login"
LOGIN_TTL_SECONDS = 300
WEB_CLIENT = "bfc-web"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, payload: dict[str, object]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{body}.{mac}"


def unsign(key: bytes, value: str) -> dict[str, object] | None:
    """The payload ``sign`` made, or None for anything else (altered, foreign, not ASCII)."""
    body, _, mac = value.partition(".")
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    # As bytes: compare_digest refuses str with characters outside ASCII (a TypeError).
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    payload: dict[str, object] = json.loads(_unb64(body))
    return payload


def _sign_in_failed(detail: str) -> ProblemError:
    return ProblemError(401, "sign_in_failed", "Sign-in could not be completed", detail)


def _callback_url(settings: Settings) -> str:
    return f"{settings.api_browser_url}/auth/callback"


def _secure(settings: Settings) -> bool:
    # Over https the cookies must never travel in clear; over the local stack's http a
    # Secure cookie would not come back (loopback aside, which not every browser honours).
    return settings.api_browser_url.startswith("https://")


def _allowed_next(request: Request, next_url: str) -> bool:
    # Only back to the Web UI: anything else would make this an open redirect.
    origins: list[str] = request.app.state.codec_origins
    parts = urlsplit(next_url)
    return f"{parts.scheme}://{parts.netloc}" in origins


@router.get("/login", include_in_schema=False)
async def login(
    request: Request, next_url: Annotated[str, Query(alias="next")]
) -> RedirectResponse:
    """Start a Keycloak sign-in (authorization code + PKCE) that ends back in the Web UI."""
    if not _allowed_next(request, next_url):
        raise ProblemError(
            422, "validation_failed", "next must be a Temporal Web UI page", next_url,
            errors=[{"field": "next", "code": "not_allowed", "message": "not a Web UI page"}],
        )  # fmt: skip
    settings: Settings = request.app.state.settings
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(24)
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    query = urlencode(
        {
            "client_id": WEB_CLIENT,
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": _callback_url(settings),
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"{settings.keycloak_issuer}/protocol/openid-connect/auth?{query}")
    login_state = {"state": state, "verifier": verifier, "next": next_url,
                   "exp": int(time.time()) + LOGIN_TTL_SECONDS}  # fmt: skip
    response.set_cookie(
        LOGIN_COOKIE,
        sign(request.app.state.session_key, login_state),
        max_age=LOGIN_TTL_SECONDS,
        httponly=True,
        secure=_secure(settings),
        samesite="lax",
        path="/auth",
    )
    return response


@router.get("/callback", include_in_schema=False)
async def callback(
    request: Request,
    state: str,
    code: str | None = None,
    error: str | None = None,
    login_cookie: Annotated[str | None, Cookie(alias=LOGIN_COOKIE)] = None,
) -> RedirectResponse:
    """Finish the sign-in: exchange the code, keep the token in an HttpOnly cookie."""
    settings: Settings = request.app.state.settings
    if error is not None or code is None:
        # Keycloak sends the person back with an error instead of a code (consent refused,
        # the login abandoned): OAuth 2.0 (RFC 6749 4.1.2.1).
        raise _sign_in_failed(f"Keycloak did not sign you in ({error or 'no code'})")
    pending = unsign(request.app.state.session_key, login_cookie or "") if login_cookie else None
    if (
        pending is None
        or pending.get("state") != state
        or not isinstance(pending.get("exp"), int)
        or int(str(pending["exp"])) < time.time()
    ):
        raise _sign_in_failed("the sign-in expired or did not start here; start again")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            exchanged = await client.post(
                token_endpoint(settings),
                data={
                    "grant_type": "authorization_code",
                    "client_id": WEB_CLIENT,
                    "code": code,
                    "redirect_uri": _callback_url(settings),
                    "code_verifier": str(pending["verifier"]),
                },
            )
    except httpx.HTTPError as exc:
        raise keycloak_unavailable("the sign-in could not reach Keycloak; start again") from exc
    if exchanged.status_code != 200:
        raise _sign_in_failed("Keycloak refused the code")
    token: str = exchanged.json()["access_token"]
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        verified = verifier.verify(token)
    except InvalidToken as exc:
        raise _sign_in_failed(str(exc)) from exc
    except IssuerUnreachable as exc:
        raise keycloak_unavailable("cannot check the token now; start again") from exc
    response = RedirectResponse(str(pending["next"]))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(1, int(verified.claims["exp"]) - int(time.time())),
        httponly=True,
        secure=_secure(settings),
        samesite="lax",
        path="/codec",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/auth", secure=_secure(settings), httponly=True)
    return response
