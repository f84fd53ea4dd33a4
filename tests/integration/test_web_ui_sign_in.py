"""Sign-in for the Web UI: Keycloak code flow with PKCE ends in a cookie the codec accepts."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import default as default_converter

from api.main import create_app
from infra.envelope import EnvelopeCipher
from infra.settings import Settings
from infra.temporal import EnvelopePayloadCodec


async def sign_in(api: httpx.AsyncClient, settings: Settings, username: str) -> dict[str, str]:
    """What a browser does: follow the API to Keycloak, post the login form, come back."""
    ui_page = f"{settings.temporal_ui_url}/namespaces/default/workflows"
    start = await api.get("/auth/login", params={"next": ui_page})
    assert start.status_code == 307, start.text
    authorize = start.headers["location"]
    assert authorize.startswith(settings.keycloak_issuer)
    assert parse_qs(urlsplit(authorize).query)["code_challenge_method"] == ["S256"]

    async with httpx.AsyncClient(timeout=10) as browser:  # Keycloak, over real HTTP
        page = await browser.get(authorize)
        form = re.search(r'<form[^>]+action="([^"]+)"', page.text)
        assert form is not None, page.text[:300]
        # Keycloak marks its cookies Secure even over http; browsers keep them for loopback
        # hosts (a trustworthy origin), httpx does not: hand them back as a browser would.
        kept = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar)
        posted = await browser.post(
            html.unescape(form.group(1)),
            data={"username": username, "password": f"dev-{username}"},
            headers={"Cookie": kept},
        )
    assert posted.status_code == 302, posted.text[:300]
    back = urlsplit(posted.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == f"{settings.api_url}/auth/callback"

    login_state = start.cookies["bfc_login"]
    api.cookies.clear()  # from here on, every cookie is sent by hand
    done = await api.get(
        f"/auth/callback?{back.query}", headers={"Cookie": f"bfc_login={login_state}"}
    )
    assert done.status_code == 307, done.text
    assert done.headers["location"] == ui_page
    cookie = done.headers["set-cookie"]
    assert "bfc_session=" in cookie
    assert "HttpOnly" in cookie and "Path=/codec" in cookie and "SameSite=lax" in cookie
    session = done.cookies["bfc_session"]
    api.cookies.clear()
    return {"Cookie": f"bfc_session={session}"}


async def encrypted_payloads(cipher: EnvelopeCipher, text: str) -> str:
    plain = default_converter().payload_converter.to_payloads([text])
    encoded = await EnvelopePayloadCodec(cipher).encode(plain)
    return json_format.MessageToJson(Payloads(payloads=encoded))


async def test_an_operator_signed_in_through_keycloak_decodes_with_the_cookie(
    api: httpx.AsyncClient, settings: Settings, cipher: EnvelopeCipher
) -> None:
    cookie = await sign_in(api, settings, "olivia")
    body = await encrypted_payloads(cipher, "PII-MARKER-web-ui")
    headers = {"Content-Type": "application/json", "Origin": settings.temporal_ui_url}

    decoded = await api.post("/codec/decode", content=body, headers={**headers, **cookie})
    assert decoded.status_code == 200, decoded.text
    assert decoded.headers["access-control-allow-credentials"] == "true"
    assert "PII-MARKER-web-ui" in str(json_format.ParseDict(decoded.json(), Payloads()))

    anonymous = await api.post("/codec/decode", content=body, headers=headers)
    assert anonymous.status_code == 401
    # The cookie opens the codec only: the rest of the API still wants a bearer token.
    assert (await api.get("/v1/accounts", headers=cookie)).status_code == 401


async def test_a_customer_signed_in_is_still_refused(
    api: httpx.AsyncClient, settings: Settings, cipher: EnvelopeCipher
) -> None:
    cookie = await sign_in(api, settings, "alice")
    body = await encrypted_payloads(cipher, "PII-MARKER-not-for-alice")
    refused = await api.post(
        "/codec/decode", content=body, headers={"Content-Type": "application/json", **cookie}
    )
    assert refused.status_code == 403


@pytest.mark.parametrize("target", ["https://evil.example/", "http://127.0.0.1:8000/v1/accounts"])
async def test_sign_in_only_returns_to_the_web_ui(api: httpx.AsyncClient, target: str) -> None:
    response = await api.get("/auth/login", params={"next": target})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "next"


async def test_a_callback_without_its_login_state_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.get("/auth/callback", params={"code": "forged", "state": "forged"})
    assert response.status_code == 401
    assert response.json()["code"] == "sign_in_failed"


async def test_a_sign_in_keycloak_sent_back_with_an_error_or_a_strange_cookie_is_refused(
    api: httpx.AsyncClient,
) -> None:
    # Consent refused or the login abandoned: Keycloak returns an error and no code.
    refused = await api.get("/auth/callback", params={"error": "access_denied", "state": "s"})
    assert (refused.status_code, refused.json()["code"]) == (401, "sign_in_failed")
    assert "access_denied" in refused.json()["detail"]
    # A login-state cookie that is not ours, with characters outside ASCII.
    odd = await api.get(
        "/auth/callback",
        params={"code": "c", "state": "s"},
        headers={b"Cookie": "bfc_login=x.\u00e9".encode()},
    )
    assert (odd.status_code, odd.json()["code"]) == (401, "sign_in_failed")


async def test_behind_an_https_address_the_sign_in_comes_back_there_with_secure_cookies(
    settings: Settings,
) -> None:
    public = settings.model_copy(update={"api_public_url": "https://payments.example/"})
    app = create_app(public)
    ui_page = f"{settings.temporal_ui_url}/namespaces/default/workflows"
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as proxied:
            start = await proxied.get("/auth/login", params={"next": ui_page})
    assert start.status_code == 307, start.text
    sent_back_to = parse_qs(urlsplit(start.headers["location"]).query)["redirect_uri"]
    assert sent_back_to == ["https://payments.example/auth/callback"]
    assert "Secure" in start.headers["set-cookie"]


async def test_on_the_local_stack_the_cookies_are_not_marked_secure(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    ui_page = f"{settings.temporal_ui_url}/namespaces/default/workflows"
    start = await api.get("/auth/login", params={"next": ui_page})
    assert start.status_code == 307, start.text
    assert "Secure" not in start.headers["set-cookie"]
