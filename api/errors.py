"""RFC 9457 problem details for every error the API returns.

Each problem carries a stable ``code`` that clients branch on; the human ``detail`` may
change wording. Validation problems list every offending field in ``errors`` with a JSON
pointer-like ``field`` and the reason.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from infra.envelope import KeyServiceUnavailable
from infra.postgres_pool import DATABASE_UNAVAILABLE
from models.errors import BusinessRuleError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_failed",
    503: "unavailable",
}
# When to ask again after a 503: the restarts of PostgreSQL we measured took about a second;
# a client backs off further on its own if the next answer is a 503 again.
RETRY_AFTER_SECONDS = "1"


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extensions = extensions

    def response(self, instance: str) -> JSONResponse:
        return problem_response(
            self.status,
            self.code,
            self.title,
            self.detail,
            instance=instance,
            headers=self.headers,
            **self.extensions,
        )


def unavailable(code: str, title: str, detail: str) -> ProblemError:
    """A 503 for something we depend on that cannot answer now, with when to ask again."""
    return ProblemError(503, code, title, detail, headers={"Retry-After": RETRY_AFTER_SECONDS})


def temporal_unavailable() -> ProblemError:
    return unavailable("unavailable", "Temporal is not reachable", "try again shortly")


def keycloak_unavailable(detail: str = "try again shortly") -> ProblemError:
    return unavailable("unavailable", "Keycloak is not reachable", detail)


# Temporal's answers that mean "not reachable now", not "no such workflow" (NOT_FOUND) or a
# refusal: the client has already retried these for API_TEMPORAL_RETRY (api/deps.py).
TEMPORAL_AWAY = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})


def invalid_fields(errors: list[dict[str, str]], code: str = "validation_failed") -> ProblemError:
    """The 422 that names every offending field (``errors``: field, code, message); one shape
    for the schema's checks and the routes' own."""
    fields = ", ".join(e["field"] for e in errors)
    return ProblemError(
        422, code, "The request is not valid", f"invalid field(s): {fields}", errors=errors
    )


def invalid_field(field: str, code: str, message: str) -> ProblemError:
    """The 422 for one offending field, answered with that field's own ``code``."""
    return invalid_fields([{"field": field, "code": code, "message": message}], code)


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://docs.bfc.example/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return "body"  # its location's second part is a character position, not a field
    # ("body", "amount", "currency") -> "amount.currency"; query/header names kept as they are.
    parts = [str(p) for p in error["loc"]]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:] or parts
    return ".".join(parts)


def _message(error: dict[str, Any]) -> str:
    message: str = error["msg"]
    reason = (error.get("ctx") or {}).get("error")
    if error["type"] == "json_invalid" and reason:
        return f"{message}: {reason}"  # "JSON decode error" alone does not say where
    return message


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(BusinessRuleError)
    async def _business(request: Request, exc: BusinessRuleError) -> JSONResponse:
        extensions: dict[str, Any] = {} if exc.index is None else {"index": exc.index}
        return problem_response(
            exc.status,
            exc.code,
            "The request breaks a business rule",
            exc.detail,
            instance=request.url.path,
            **extensions,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(e), "code": e["type"], "message": _message(e)} for e in exc.errors()
        ]
        return invalid_fields(errors).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES_BY_STATUS.get(exc.status_code, "http_error")
        return problem_response(
            exc.status_code,
            code,
            str(exc.detail),
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def _database_away(request: Request, exc: Exception) -> JSONResponse:
        # Each of the API's writes is one transaction: the request committed whole or not
        # at all. The money-moving ones carry an Idempotency-Key, so sending one again
        # after a 503 is safe either way.
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return unavailable(
            "database_unavailable",
            "The database is not available right now",
            "nothing was left half-done; send the request again shortly, with the same "
            "Idempotency-Key where it has one",
        ).response(request.url.path)

    for exc_class in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_class, _database_away)

    @app.exception_handler(KeyServiceUnavailable)
    async def _vault_away(request: Request, exc: KeyServiceUnavailable) -> JSONResponse:
        # Each write is one transaction and its envelopes are made before it commits, so a
        # request that met Vault away changed nothing.
        log.warning("%s %s: Vault unavailable: %s", request.method, request.url.path, exc)
        return unavailable(
            "unavailable", "Vault is not reachable", "nothing was changed; try again shortly"
        ).response(request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A problem document instead of Starlette's plain text; the traceback goes to the
        # server's log (Starlette raises it again after this answer), never out.
        return problem_response(
            500, "internal_error", "Something went wrong on our side", instance=request.url.path
        )

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, exc: RPCError) -> JSONResponse:
        # A route that needs Temporal and met it away answers 503, not 500: whatever the
        # route committed before (a payment, a refund's reservation) is picked up by the
        # sweep or by the same request sent again with its Idempotency-Key.
        if exc.status not in TEMPORAL_AWAY:
            # Handled here, Starlette would not log it: the traceback goes to the log.
            log.error("%s %s: Temporal refused", request.method, request.url.path, exc_info=exc)
            return await _unexpected(request, exc)
        log.warning("%s %s: Temporal unavailable: %s", request.method, request.url.path, exc)
        return temporal_unavailable().response(request.url.path)
