"""In a real browser: an operator signed in through Keycloak reads decoded payloads in the
Temporal Web UI; an anonymous visitor sees only envelopes.

Headless Chromium from Debian's packages (``make browser`` installs it), driven by
Playwright without a browser download.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from temporalio.client import Client

from infra.settings import Settings
from models.contracts import PLATFORM_CHECK_WORKFLOW, PlatformCheckInput, PlatformCheckResult

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No background traffic: this machine's network is closed, and a test talks to loopback only.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed: run `make browser`"
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield browser
        await browser.close()


async def use_codec_with_credentials(page: Page, settings: Settings) -> None:
    """The UI's browser-level codec setting: our endpoint, cookies included."""
    await page.click('[data-testid^="data-encoder-status"]')
    await page.click('[data-testid="use-local-endpoint-input"]')
    await page.fill("dialog textarea", f"{settings.api_url}/codec")
    await page.get_by_text("Include cross-origin credentials").click()
    assert await page.locator("#pass-access-credentials").is_checked()
    await page.get_by_role("button", name="Apply").click()
    await page.reload()


async def open_workflow(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    await page.goto(url)
    await page.locator('[data-testid="input-and-result"]').wait_for()
    return page


async def test_an_operator_sees_decoded_payloads_and_a_stranger_does_not(
    browser: Browser, temporal: Client, settings: Settings, unique: str
) -> None:
    marker = f"PII-MARKER-{unique}"
    workflow_id = f"e2e-codec-{unique}"
    await temporal.execute_workflow(
        PLATFORM_CHECK_WORKFLOW,
        PlatformCheckInput(requested_by=marker),
        id=workflow_id,
        task_queue=settings.task_queue,
        result_type=PlatformCheckResult,
    )
    namespace = settings.temporal_namespace
    url = f"{settings.temporal_ui_url}/namespaces/{namespace}/workflows/{workflow_id}"

    stranger = await open_workflow(await browser.new_context(), url)
    await use_codec_with_credentials(stranger, settings)
    await stranger.get_by_text("A256GCM").first.wait_for()  # the envelope, undecoded
    assert marker not in await stranger.content()

    operator_context = await browser.new_context()
    operator = await operator_context.new_page()
    await operator.goto(f"{settings.api_url}/auth/login?next={url}")
    await operator.fill("#username", "olivia")
    await operator.fill("#password", "dev-olivia")
    await operator.click("#kc-login")
    await operator.wait_for_url(f"{url}*")
    cookies = {c["name"]: c for c in await operator_context.cookies()}
    assert cookies["bfc_session"]["httpOnly"] is True
    assert cookies["bfc_session"]["path"] == "/codec"

    await use_codec_with_credentials(operator, settings)
    await operator.get_by_text(marker).first.wait_for(timeout=20_000)
    assert "A256GCM" not in await operator.content()
