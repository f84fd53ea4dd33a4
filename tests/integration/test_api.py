"""The API process started by the stack: health, readiness and problem+json errors."""

from __future__ import annotations

import httpx

from infra.settings import Settings


def test_health_and_readiness(settings: Settings) -> None:
    assert httpx.get(f"{settings.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{settings.api_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "temporal": "ok"}


def test_unknown_route_answers_problem_json(settings: Settings) -> None:
    response = httpx.get(f"{settings.api_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
