"""The KYC provider sandbox as a real process, spoken to through our connector.

The sandbox runs on a free port with a temporary home and calls back a small receiver of
ours (another free port) that records every callback and can be told to answer 500. Nothing
here needs the platform's stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from infra.kyc import InvalidSignature, KycProvider, parse_callback, verify_callback_signature
from models.kyc import KycDocument, KycPerson, KycRejected, KycVerification

API_KEY = "test-kyc-api-key"
SECRET = "test-kyc-webhook-secret"
DELAY_SECONDS = 0.3
RETRY_BASE_SECONDS = 0.3
PERSON = KycPerson(given_name="Maria", family_name="Lindqvist", date_of_birth=date(1987, 4, 12))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Callback:
    reference: str
    signature: str | None
    body: bytes
    answered: int


class Receiver:
    """Our side of the callbacks: records them, and answers 500 while told to."""

    def __init__(self) -> None:
        self.calls: list[Callback] = []
        self.failures_left: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                reference = json.loads(body).get("reference", "")
                with receiver._lock:
                    fail = receiver.failures_left.get(reference, 0) > 0
                    if fail:
                        receiver.failures_left[reference] -= 1
                    status = 500 if fail else 200
                    receiver.calls.append(
                        Callback(reference, self.headers.get("KYC-Signature"), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/kyc/callbacks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, reference: str, times: int) -> None:
        with self._lock:
            self.failures_left[reference] = times

    def of(self, reference: str) -> list[Callback]:
        with self._lock:
            return [c for c in self.calls if c.reference == reference]

    async def wait_for(
        self, reference: str, *, count: int = 1, answered: int | None = None, timeout: float = 15
    ) -> list[Callback]:
        deadline = time.monotonic() + timeout
        while True:
            calls = [c for c in self.of(reference) if answered in (None, c.answered)]
            if len(calls) >= count:
                return calls
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{count} callback(s) for {reference} expected, got {self.of(reference)}"
                )
            await asyncio.sleep(0.05)


class Sandbox:
    """``python -m infra.sandbox.kyc_provider`` as a child process, stopped by its pid."""

    def __init__(self, home: Path, port: int, default_callback_url: str) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BFC_KYC_")},
            "BFC_KYC_API_KEY": API_KEY,
            "BFC_KYC_WEBHOOK_SECRET": SECRET,
            "BFC_KYC_HOME": str(home),
            "BFC_KYC_HOST": "127.0.0.1",
            "BFC_KYC_PORT": str(port),
            "BFC_KYC_DELAY_SECONDS": str(DELAY_SECONDS),
            "BFC_KYC_RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
            "BFC_KYC_CALLBACK_URL": default_callback_url,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "sandbox.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "infra.sandbox.kyc_provider"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"kyc sandbox exited: {(self.home / 'sandbox.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("kyc sandbox did not answer /healthz in 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM to this pid: uvicorn shuts down cleanly
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def sandbox(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path_factory.mktemp("kyc"), _free_port(), receiver.url)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
async def kyc(sandbox: Sandbox) -> AsyncIterator[KycProvider]:
    async with KycProvider(base_url=sandbox.url, api_key=API_KEY, timeout_seconds=5) as client:
        yield client


def _reference() -> str:
    return f"onb_{uuid.uuid4().hex[:26]}"


async def _start(
    kyc: KycProvider,
    number: str,
    *,
    reference: str | None = None,
    key: str | None = None,
    callback_url: str | None = None,
) -> KycVerification:
    reference = reference or _reference()
    return await kyc.start_verification(
        reference=reference,
        document=KycDocument(type="passport", number=number, country="SE"),
        person=PERSON,
        idempotency_key=key or f"{reference}:kyc",
        callback_url=callback_url,
    )


@pytest.mark.parametrize(
    ("number", "verdict", "failed_check"),
    [
        ("CLEAR-0001", "clear", None),
        ("MISMATCH-0001", "mismatch", "data_match"),
        ("FORGED-0001", "forged", "document_authentic"),
        ("MANUAL-0001", "needs_manual_check", None),
    ],
)
async def test_each_verdict_is_called_back_signed(
    kyc: KycProvider, receiver: Receiver, number: str, verdict: str, failed_check: str | None
) -> None:
    started = await _start(kyc, number, callback_url=receiver.url)
    assert started.id.startswith("ver_")
    assert started.status == "pending"
    assert started.verdict is None

    (callback,) = await receiver.wait_for(started.reference)
    now = datetime.now(UTC)
    verify_callback_signature(SECRET, callback.signature, callback.body, now=now)
    with pytest.raises(InvalidSignature):
        verify_callback_signature("not-the-secret", callback.signature, callback.body, now=now)
    result = parse_callback(callback.body)
    assert (result.id, result.reference, result.verdict) == (started.id, started.reference, verdict)
    if failed_check is not None:
        assert result.checks[failed_check] == "fail"
    elif verdict == "clear":
        assert set(result.checks.values()) == {"pass"}
    else:
        assert "inconclusive" in result.checks.values()

    polled = await kyc.get_verification(started.id)
    assert polled.completed
    assert (polled.verdict, polled.checks, polled.completed_at) == (
        result.verdict,
        result.checks,
        result.completed_at,
    )


async def test_without_a_callback_url_the_configured_default_is_called(
    kyc: KycProvider, receiver: Receiver
) -> None:
    started = await _start(kyc, "CLEAR-0002")
    (callback,) = await receiver.wait_for(started.reference)
    assert parse_callback(callback.body).id == started.id


async def test_slow_stays_pending_never_calls_back_and_can_be_polled(
    kyc: KycProvider, receiver: Receiver
) -> None:
    slow = await _start(kyc, "SLOW-0001", callback_url=receiver.url)
    quick = await _start(kyc, "CLEAR-0003", callback_url=receiver.url)
    # By the time a verification started after it has been decided and called back...
    await receiver.wait_for(quick.reference)
    await asyncio.sleep(3 * DELAY_SECONDS)
    # ...the slow one is still pending, has not called back, and says so when polled.
    polled = await kyc.get_verification(slow.id)
    assert (polled.status, polled.verdict, polled.completed_at) == ("pending", None, None)
    assert receiver.of(slow.reference) == []


async def test_starting_is_idempotent(kyc: KycProvider) -> None:
    reference = _reference()
    first = await _start(kyc, "SLOW-0002", reference=reference, key="key-a")
    again = await _start(kyc, "SLOW-0002", reference=reference, key="key-a")
    assert again.id == first.id
    other_key = await _start(kyc, "SLOW-0002", reference=reference, key="key-b")
    assert other_key.id != first.id
    # The same key with another body is refused, not quietly answered.
    with pytest.raises(KycRejected) as caught:
        await _start(kyc, "SLOW-0003", reference=reference, key="key-a")
    assert caught.value.status_code == 409
    assert "idempotency_key_reused" in str(caught.value)


async def test_invalid_data_is_rejected_with_the_field(kyc: KycProvider) -> None:
    with pytest.raises(KycRejected) as caught:
        await kyc.start_verification(
            reference=_reference(),
            document=KycDocument(type="passport", number="CLEAR-1", country="Sweden"),
            person=PERSON,
            idempotency_key=uuid.uuid4().hex,
        )
    assert caught.value.status_code == 422
    with pytest.raises(KycRejected) as missing:
        await kyc.get_verification("ver_doesnotexist")
    assert missing.value.status_code == 404


async def test_a_callback_answered_with_500_comes_again(
    kyc: KycProvider, receiver: Receiver
) -> None:
    reference = _reference()
    receiver.fail(reference, times=1)
    started = await _start(kyc, "MISMATCH-0002", reference=reference, callback_url=receiver.url)
    first, second = await receiver.wait_for(reference, count=2)
    assert (first.answered, second.answered) == (500, 200)
    assert first.body == second.body
    for attempt in (first, second):
        verify_callback_signature(SECRET, attempt.signature, attempt.body, now=datetime.now(UTC))
    assert parse_callback(second.body).id == started.id
    # Delivered: no third attempt follows.
    await asyncio.sleep(4 * RETRY_BASE_SECONDS)
    assert len(receiver.of(reference)) == 2


async def test_a_bad_api_key_is_rejected(sandbox: Sandbox) -> None:
    async with KycProvider(base_url=sandbox.url, api_key="wrong-key") as wrong:
        with pytest.raises(KycRejected) as start:
            await _start(wrong, "CLEAR-0004")
        with pytest.raises(KycRejected) as get:
            await wrong.get_verification("ver_any")
    assert start.value.status_code == get.value.status_code == 401
    # Health needs no key.
    assert httpx.get(f"{sandbox.url}/healthz", timeout=2).status_code == 200


async def test_state_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    sandbox = Sandbox(tmp_path / "kyc", _free_port(), receiver.url)
    sandbox.start()
    try:
        async with KycProvider(base_url=sandbox.url, api_key=API_KEY) as kyc:
            done = await _start(kyc, "FORGED-0003")
            pending = await _start(kyc, "SLOW-0004")
            owed_reference = _reference()
            receiver.fail(owed_reference, times=1_000)
            owed = await _start(kyc, "CLEAR-0005", reference=owed_reference)
            await receiver.wait_for(done.reference)
            await receiver.wait_for(owed_reference, answered=500)

            sandbox.stop()
            receiver.fail(owed_reference, times=0)
            sandbox.start()

            assert (await kyc.get_verification(done.id)).verdict == "forged"
            assert (await kyc.get_verification(pending.id)).status == "pending"
            replay = await _start(kyc, "SLOW-0004", reference=pending.reference)
            assert replay.id == pending.id
            # The callback still owed before the restart is delivered after it.
            (delivered,) = await receiver.wait_for(owed_reference, answered=200)
            assert parse_callback(delivered.body).id == owed.id
            assert len(receiver.of(done.reference)) == 1
    finally:
        sandbox.stop()
