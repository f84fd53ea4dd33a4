"""Request bodies are bounded: a 413 problem past the bound, whether the size is declared or
the body arrives in chunks, before a route has it all; the codec routes take more."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api.body_limit import LimitRequestBodies
from api.errors import install_problem_handlers
from api.nul_guard import RefuseNulCharacters

LIMIT, CODEC_LIMIT = 1_000, 5_000


class Note(BaseModel):
    text: str


def _app(calls: list[str]) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    # As in api.main: the bound runs before the NUL check, which may read a body itself.
    app.add_middleware(RefuseNulCharacters)
    app.add_middleware(LimitRequestBodies, max_bytes=LIMIT, codec_max_bytes=CODEC_LIMIT)

    @app.post("/notes")
    def create(note: Note) -> dict[str, int]:
        calls.append("notes")
        return {"length": len(note.text)}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        body = await request.body()
        calls.append("raw")
        return {"length": len(body)}

    @app.post("/codec/decode")
    async def decode(request: Request) -> dict[str, int]:
        body = await request.body()
        calls.append("codec")
        return {"length": len(body)}

    return app


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def client(calls: list[str]) -> TestClient:
    return TestClient(_app(calls))


def _chunks(size: int, piece: int = 100) -> Iterator[bytes]:
    """A body without Content-Length, in pieces: the bound must count as it arrives."""
    body = b'{"text": "' + b"x" * (size - 12) + b'"}'
    for start in range(0, len(body), piece):
        yield body[start : start + piece]


def _too_large(response: Any) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "payload_too_large"


def test_a_declared_size_over_the_bound_is_refused_before_reading(
    client: TestClient, calls: list[str]
) -> None:
    _too_large(client.post("/raw", content=b"x" * (LIMIT + 1)))
    assert calls == []


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/notes", "application/json"),  # read by FastAPI, after the NUL check read it
        ("/raw", "application/octet-stream"),  # read by the route itself
    ],
)
def test_a_chunked_body_over_the_bound_is_refused_as_it_arrives(
    client: TestClient, calls: list[str], path: str, content_type: str
) -> None:
    response = client.post(
        path, content=_chunks(LIMIT + 500), headers={"Content-Type": content_type}
    )
    _too_large(response)
    assert calls == []


def test_bodies_within_the_bound_pass_and_the_codec_routes_take_more(
    client: TestClient, calls: list[str]
) -> None:
    ok = client.post("/notes", content=_chunks(LIMIT), headers={"Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text
    assert client.post("/codec/decode", content=b"x" * (LIMIT * 3)).json() == {"length": 3_000}
    _too_large(client.post("/codec/decode", content=b"x" * (CODEC_LIMIT + 1)))
    assert calls == ["notes", "codec"]
