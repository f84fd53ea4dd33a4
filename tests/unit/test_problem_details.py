"""RFC 9457 problem documents: stable codes, and validation errors that name the field; a
database that is away is a 503 to retry, anything unexpected a 500 without its traceback."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy.exc
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ProblemError, install_problem_handlers


class Amount(BaseModel):
    amount: int = Field(gt=0)
    currency: str = Field(pattern="^[A-Z]{3}$")


class Body(BaseModel):
    money: Amount


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/things")
    def create(body: Body) -> dict[str, int]:
        return {"amount": body.money.amount}

    @app.get("/things/{thing_id}")
    def read(thing_id: str) -> dict[str, str]:
        raise ProblemError(404, "thing_not_found", "No such thing", f"{thing_id} does not exist")

    @app.get("/fails/{kind}")
    def fail(kind: str) -> None:
        raise _FAILURES[kind]

    return app


_FAILURES: dict[str, Exception] = {
    "cut": psycopg.OperationalError("server closed the connection unexpectedly"),
    "pool": PoolTimeout("couldn't get a connection after 5.00 sec"),
    "engine": sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused")),
    "bug": KeyError("secret_internal_detail"),
    "temporal_away": RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b""),
    "temporal_slow": RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b""),
    "temporal_refused": RPCError("secret_internal_detail", RPCStatusCode.INVALID_ARGUMENT, b""),
}


def test_validation_errors_name_each_field_and_a_code() -> None:
    response = TestClient(_app()).post("/things", json={"money": {"amount": 0, "currency": "eur"}})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_failed"
    assert {e["field"] for e in body["errors"]} == {"money.amount", "money.currency"}
    assert all(e["code"] for e in body["errors"])


def test_business_problems_keep_their_code_and_instance() -> None:
    response = TestClient(_app()).get("/things/abc")
    assert response.status_code == 404
    assert response.json() == {
        "type": "https://docs.bfc.example/problems/thing_not_found",
        "title": "No such thing",
        "status": 404,
        "code": "thing_not_found",
        "detail": "abc does not exist",
        "instance": "/things/abc",
    }


def test_framework_errors_are_problems_too() -> None:
    response = TestClient(_app()).delete("/things/abc")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize("kind", ["cut", "pool", "engine"])
def test_a_database_that_is_away_is_a_503_to_send_again(kind: str) -> None:
    response = TestClient(_app()).get(f"/fails/{kind}")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "database_unavailable"


def test_an_unexpected_error_is_a_500_problem_that_keeps_its_details_in() -> None:
    response = TestClient(_app(), raise_server_exceptions=False).get("/fails/bug")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    assert "secret_internal_detail" not in response.text


@pytest.mark.parametrize("kind", ["temporal_away", "temporal_slow"])
def test_temporal_that_is_away_is_a_503_to_send_again(kind: str) -> None:
    response = TestClient(_app()).get(f"/fails/{kind}")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "unavailable"


def test_temporal_refusing_a_call_is_a_500_problem_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = TestClient(_app()).get("/fails/temporal_refused")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "secret_internal_detail" not in response.text
    assert any(r.exc_info for r in caplog.records), "the traceback must reach the log"


def test_a_body_that_is_not_json_is_named_as_the_body_with_the_reason() -> None:
    response = TestClient(_app()).post(
        "/things", content=b'{"money": {amount: 1}}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "body"
    assert error["code"] == "json_invalid"
    assert "property name" in error["message"]
