"""Liveness and readiness: the only routes that need no token."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import EngineDep, TemporalClientDep
from api.errors import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(engine: EngineDep, temporal: TemporalClientDep) -> dict[str, Any] | JSONResponse:
    """The API can do its work: the ledger database and Temporal answer."""
    checks: dict[str, str] = {}

    def _database() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await asyncio.to_thread(_database)
        checks["database"] = "ok"
    except Exception as exc:  # report, do not raise: readiness is a report
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        if temporal is None:
            raise ConnectionError("not connected")
        await asyncio.wait_for(temporal.service_client.check_health(), timeout=3)
        checks["temporal"] = "ok"
    except Exception as exc:
        checks["temporal"] = f"unavailable: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(
        503, "not_ready", "A dependency is unavailable", instance="/readyz", checks=checks
    )
