"""Who is calling: a Keycloak access token in, a ``Principal`` out.

Every route but health needs a bearer token issued by the realm (RS256, issuer, audience,
expiry; see ``infra.keycloak.TokenVerifier``). Missing or invalid -> 401 with
``WWW-Authenticate``; valid but without the role a route needs -> 403; not checkable now
(Keycloak away and the token's key never seen) -> 503. One dependency per
rule: ``CurrentPrincipal`` and ``require_role(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Cookie, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ProblemError, keycloak_unavailable
from infra.key_at_hand import in_place_or_thread
from infra.keycloak import InvalidToken, IssuerUnreachable, TokenVerifier

SESSION_COOKIE = "bfc_session"

STAFF_ROLES = frozenset({"operator", "admin"})


@dataclass(frozen=True)
class Principal:
    """The caller as workflows and the audit log see them: ids and roles, never the token."""

    subject: str
    username: str | None
    roles: frozenset[str]
    client_id: str | None

    @property
    def is_staff(self) -> bool:
        return bool(self.roles & STAFF_ROLES)

    def own_client(self) -> str:
        """The app this caller acts as: what an app owns (endpoints, events, its payments
        and applications) is keyed by it. A token naming no client must not fall back to
        None, which would match every row that no app owns."""
        if self.client_id is None:  # every Keycloak access token names its client (azp)
            raise ProblemError(403, "forbidden", "Not allowed", "the token names no client")
        return self.client_id


_bearer = HTTPBearer(auto_error=False)


def _unauthenticated(detail: str) -> ProblemError:
    return ProblemError(
        401,
        "unauthenticated",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="bfc"'},
    )


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
) -> Principal:
    if credentials is not None and credentials.scheme.lower() == "bearer":
        raw = credentials.credentials
    elif session and request.url.path.startswith("/codec/"):
        # People in the Temporal Web UI: the sign-in cookie (api/routes/session.py), which
        # the browser sends only to /codec.
        raw = session
    else:
        raise _unauthenticated("a bearer token from the bfc realm is required")
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        # In place with the realm's key at hand; a first or rotated key is fetched in a thread.
        token = await in_place_or_thread(
            lambda: verifier.verify(raw, local_only=True), lambda: verifier.verify(raw)
        )
    except InvalidToken as exc:
        raise _unauthenticated(f"invalid token: {exc}") from exc
    except IssuerUnreachable as exc:
        # Not a 401: the token may be good, and a client told it is not would log in
        # again, against the same Keycloak.
        raise keycloak_unavailable("cannot check tokens now; try again") from exc
    return Principal(
        subject=token.subject,
        username=token.username,
        roles=token.roles,
        client_id=token.client_id,
    )


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: str) -> object:
    """A dependency that lets through callers holding any of ``roles``."""
    allowed = frozenset(roles)

    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.roles & allowed:
            raise ProblemError(
                403,
                "forbidden",
                "Not allowed",
                f"this needs one of the roles: {', '.join(sorted(allowed))}",
            )
        return principal

    return Depends(check)


StaffPrincipal = Annotated[Principal, require_role(*STAFF_ROLES)]
