"""Refuse the NUL character (U+0000) in a request's path, query and JSON body, before any
route runs.

PostgreSQL's text cannot hold a NUL: one that reached a query failed there, and the caller
got a 500 for what is bad input. No id, code or free text of ours means a NUL, so it is
refused at the door, once for every route: the usual 422 validation problem, naming the
field (``code`` ``nul_character``), with nothing read or written.

The body is read here only when it is JSON and might hold a NUL (the escape ``\\u0000``);
then it is parsed to name the field, and handed on to the route unchanged otherwise.
"""

from __future__ import annotations

import email.message
import itertools
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import invalid_fields

NUL_CHARACTER = "nul_character"
_MESSAGE = "must not contain the NUL character (U+0000)"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_NAMED_FIELDS = 20


class RefuseNulCharacters:
    """ASGI middleware: a 422 for a NUL anywhere in the path, the query or a JSON body."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        fields = _in_path(scope) + _in_query(scope)
        if not fields and _has_json_body(scope):
            body, receive = await _read_body(receive)
            fields = _in_json(body)
        if fields:
            errors = [{"field": f, "code": NUL_CHARACTER, "message": _MESSAGE} for f in fields]
            response = invalid_fields(errors, NUL_CHARACTER).response(_printable(scope["path"]))
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def _in_path(scope: Scope) -> list[str]:
    return ["path"] if "\x00" in scope["path"] else []


def _in_query(scope: Scope) -> list[str]:
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return []
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return [_printable(name) for name, value in pairs if "\x00" in name or "\x00" in value]


def _has_json_body(scope: Scope) -> bool:
    """Whether FastAPI would parse this body as JSON: read the way it reads it (the first
    Content-Type header, its type case-insensitive, none at all taken as JSON), or a
    spelling it accepts would carry a NUL past this guard."""
    if scope["method"] not in _BODY_METHODS:
        return False
    value = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    if not value:
        return True
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a ``receive`` that hands it on to the route as one message."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: pass that on
            return b"", _replay(message, receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, _replay({"type": "http.request", "body": body, "more_body": False}, receive)


def _replay(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _in_json(body: bytes) -> list[str]:
    # A NUL in JSON text is always the escape (a raw control character is not valid JSON);
    # the bytes can also match inside an escaped backslash ("\\u0000"), so parse to be sure.
    # The body may be UTF-16 or UTF-32, which json.loads (and so the route) reads too.
    encoding = json.detect_encoding(body)
    if encoding.startswith("utf-8"):
        maybe = b"\\u0000" in body
    else:
        maybe = "\\u0000" in body.decode(encoding, errors="replace")
    if not maybe:
        return []
    try:
        document = json.loads(body)
    except ValueError:
        return []  # not JSON: the route's own validation says so
    # Named up to a bound: the answer to a body of a million NULs stays small.
    return list(itertools.islice(_nul_fields(document, ()), MAX_NAMED_FIELDS))


def _nul_fields(value: Any, at: tuple[str, ...]) -> Iterator[str]:
    """Dotted paths (``address.city``, ``event_types.0``) of the strings holding a NUL."""
    if isinstance(value, str):
        if "\x00" in value:
            yield ".".join(at) or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                yield ".".join((*at, _printable(key)))
            else:
                yield from _nul_fields(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_fields(item, (*at, str(index)))


def _printable(text: str) -> str:
    return text.replace("\x00", "\\u0000")
