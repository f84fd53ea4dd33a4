"""NUL characters are refused at the door: a 422 naming the field, before any route runs,
and every other request reaches its route unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from api.errors import install_problem_handlers
from api.nul_guard import MAX_NAMED_FIELDS, RefuseNulCharacters


def _app(calls: list[Any]) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RefuseNulCharacters)

    @app.get("/things/{thing_id}")
    def read(thing_id: str, note: str = "") -> dict[str, str]:
        calls.append(thing_id)
        return {"thing_id": thing_id, "note": note}

    @app.post("/things")
    async def create(request: Request) -> Any:
        body = await request.body()
        calls.append(body)
        return json.loads(body)

    return app


@pytest.fixture
def calls() -> list[Any]:
    return []


@pytest.fixture
def client(calls: list[Any]) -> TestClient:
    return TestClient(_app(calls))


def _refused(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "nul_character"
    assert {e["code"] for e in problem["errors"]} == {"nul_character"}
    return [e["field"] for e in problem["errors"]]


def test_a_nul_in_the_path_is_refused_before_the_route(
    client: TestClient, calls: list[Any]
) -> None:
    assert _refused(client.get("/things/pay_%00x")) == ["path"]
    assert calls == []


def test_a_nul_in_the_query_names_the_parameter(client: TestClient, calls: list[Any]) -> None:
    assert _refused(client.get("/things/t1?note=a%00b&other=ok")) == ["note"]
    assert calls == []


def test_a_nul_in_a_json_body_names_each_field(client: TestClient, calls: list[Any]) -> None:
    body = {
        "reason": "why\u0000",
        "address": {"city": "\u0000", "line1": "fine"},
        "tags": ["ok", "x\u0000"],
        "key\u0000": 1,
    }
    fields = _refused(client.post("/things", json=body))
    assert sorted(fields) == ["address.city", "key\\u0000", "reason", "tags.1"]
    assert calls == []


def test_other_requests_reach_their_route_unchanged(client: TestClient, calls: list[Any]) -> None:
    # The text "\u0000" (an escaped backslash) is no NUL; the body is handed on byte for byte.
    raw = json.dumps({"note": "C:\\u0000 is a path", "big": "x" * 200_000}).encode()
    response = client.post("/things", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert calls == [raw]
    read = client.get("/things/t1?note=%2500")
    assert read.json() == {"thing_id": "t1", "note": "%00"}


async def test_a_body_in_several_chunks_is_checked_whole_and_handed_on_whole() -> None:
    seen: list[bytes] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])

    async def run(chunks: list[bytes]) -> list[Any]:
        messages = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        sent: list[Any] = []

        async def receive() -> Any:
            return messages.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/things",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json; charset=utf-8")],
        }
        await RefuseNulCharacters(route)(scope, receive, send)
        return sent

    # The escape split across two chunks is still found.
    refused = await run([b'{"reason": "a\\u00', b'00"}'])
    assert refused[0]["status"] == 422
    assert seen == []
    await run([b'{"reason": ', b'"fine"}'])
    assert seen == [b'{"reason": "fine"}']


@pytest.mark.parametrize(
    ("headers", "encoding"),
    [
        ({"Content-Type": "Application/JSON"}, "utf-8"),  # the type in another case
        ({}, "utf-8"),  # no type: FastAPI reads the body as JSON all the same
        ({"Content-Type": "application/json"}, "utf-16"),  # json.loads reads UTF-16 too
        ({"Content-Type": "application/json"}, "utf-32"),
    ],
)
def test_a_nul_is_found_however_the_json_body_is_labelled_or_encoded(
    client: TestClient, calls: list[Any], headers: dict[str, str], encoding: str
) -> None:
    raw = json.dumps({"reason": "ab\u0000c"}).encode(encoding)
    assert _refused(client.post("/things", content=raw, headers=headers)) == ["reason"]
    assert calls == []


def test_the_first_of_two_content_types_decides_as_it_does_for_the_route(
    client: TestClient, calls: list[Any]
) -> None:
    raw = json.dumps({"reason": "ab\u0000c"}).encode()
    headers = [("content-type", "application/json"), ("content-type", "text/plain")]
    assert _refused(client.post("/things", content=raw, headers=headers)) == ["reason"]
    assert calls == []


def test_a_body_of_many_nuls_gets_a_bounded_answer(client: TestClient, calls: list[Any]) -> None:
    raw = json.dumps(["\u0000"] * 50_000).encode()
    response = client.post("/things", content=raw, headers={"Content-Type": "application/json"})
    assert _refused(response) == [str(i) for i in range(MAX_NAMED_FIELDS)]
    assert len(response.content) < 10_000
    assert calls == []
