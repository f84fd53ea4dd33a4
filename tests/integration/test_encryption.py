"""Envelope encryption and the Temporal codec, against the real Vault and Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
from google.protobuf import json_format
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

import infra.envelope
from infra.audit import list_audit_events
from infra.envelope import EnvelopeCipher, EnvelopeError, KeyServiceUnavailable
from infra.key_at_hand import KeyNotAtHand
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.temporal import EnvelopePayloadCodec, connect_temporal
from infra.vault import connect_vault
from tests.helpers.logins import Logins
from tests.helpers.stack import stopped
from tests.helpers.workflows import EchoAfterSignalWorkflow, FailWithMessageWorkflow


def rotate_platform_key(stack: Stack, settings: Settings) -> int:
    """Rotate the Transit key as an operator of Vault would (root token: the stack's own)."""
    root = json.loads(stack.vault.init_file.read_text())["root_token"]
    admin = hvac.Client(url=settings.vault_url, token=root)
    admin.secrets.transit.rotate_key(
        name=settings.vault_transit_key, mount_point=settings.vault_transit_mount
    )
    key = admin.secrets.transit.read_key(
        name=settings.vault_transit_key, mount_point=settings.vault_transit_mount
    )
    latest: int = key["data"]["latest_version"]
    return latest


def fresh_cipher(settings: Settings) -> EnvelopeCipher:
    return EnvelopeCipher(connect_vault(settings), settings)


def test_envelopes_round_trip_and_refuse_tampering(settings: Settings) -> None:
    cipher = fresh_cipher(settings)
    secret = b"Maria Lindqvist, passport X1234567"
    envelope = cipher.encrypt(secret)
    document = json.loads(envelope)
    assert document["kid"] == settings.vault_transit_key
    assert document["dk"].startswith(f"vault:v{document['kv']}:")
    assert b"Lindqvist" not in envelope
    assert fresh_cipher(settings).decrypt(envelope) == secret  # a cold cache asks Vault

    # The documented layout, compact: the header, then nonce and ciphertext.
    assert list(document) == ["v", "alg", "kid", "kv", "dk", "iv", "ct"]
    assert envelope == json.dumps(document, separators=(",", ":")).encode()

    # The header is bound as written: another version, or the same values spelled
    # otherwise, does not authenticate (the cached associated data is only for the usual
    # spelling).
    kv = document["kv"]
    for changed in ({"kv": kv + 1}, {"kv": str(kv)}, {"kv": float(kv)}, {"v": True}):
        tampered = json.dumps({**document, **changed}).encode()
        with pytest.raises(EnvelopeError, match="does not authenticate"):
            cipher.decrypt(tampered)
    assert cipher.decrypt(json.dumps(document).encode()) == secret  # spacing is not bound


def test_local_only_never_asks_vault_and_says_when_it_would_have_to(settings: Settings) -> None:
    """The payload codec encrypts in place with a key at hand and goes to a thread (and
    Vault) only on ``KeyNotAtHand``."""
    cipher = fresh_cipher(settings)
    with pytest.raises(KeyNotAtHand):
        cipher.encrypt(b"first", local_only=True)  # no data key yet
    envelope = cipher.encrypt(b"first")
    assert cipher.decrypt(cipher.encrypt(b"again", local_only=True), local_only=True) == b"again"

    cold = fresh_cipher(settings)
    with pytest.raises(KeyNotAtHand):
        cold.decrypt(envelope, local_only=True)  # its data key was never unwrapped here
    assert cold.decrypt(envelope) == b"first"
    assert cold.decrypt(envelope, local_only=True) == b"first"


async def test_the_codec_round_trips_whether_or_not_the_key_is_at_hand(
    settings: Settings,
) -> None:
    codec = EnvelopePayloadCodec(fresh_cipher(settings))
    payloads = [Payload(metadata={"encoding": b"json/plain"}, data=b'{"amount": 100}')]
    first = await codec.encode(payloads)  # a new data key: through a thread, from Vault
    second = await codec.encode(payloads)  # the same key, in place
    assert first[0].data != second[0].data and b"amount" not in second[0].data
    other = EnvelopePayloadCodec(fresh_cipher(settings))  # cold: unwraps through Vault
    assert await other.decode(first + second) == payloads + payloads


def test_a_rotated_key_still_decrypts_old_data_and_wraps_new_data(
    settings: Settings, stack: Stack
) -> None:
    before = fresh_cipher(settings).encrypt(b"written before the rotation")
    old_version = json.loads(before)["kv"]
    new_version = rotate_platform_key(stack, settings)
    assert new_version == old_version + 1

    after = fresh_cipher(settings).encrypt(b"written after the rotation")
    assert json.loads(after)["kv"] == new_version
    reader = fresh_cipher(settings)
    assert reader.decrypt(before) == b"written before the rotation"
    assert reader.decrypt(after) == b"written after the rotation"


async def test_temporal_never_sees_plaintext_and_operators_read_it_through_the_codec(
    settings: Settings,
    stack: Stack,
    temporal: Client,
    api: httpx.AsyncClient,
    logins: Logins,
    engine: Engine,
) -> None:
    marker = f"PII-MARKER-{uuid.uuid4().hex[:10]}"
    queue = f"test-codec-{uuid.uuid4().hex[:8]}"
    workflow_id = f"test-codec-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal, task_queue=queue, workflows=[EchoAfterSignalWorkflow]):
        handle = await temporal.start_workflow(
            EchoAfterSignalWorkflow.run, f"{marker}-input", id=workflow_id, task_queue=queue
        )
        # Rotate while the workflow is open: it must finish, and its history still decode.
        rotate_platform_key(stack, settings)
        await handle.signal(EchoAfterSignalWorkflow.release, f"{marker}-signal")
        assert await handle.result() == f"{marker}-input|{marker}-signal"

    # What the Temporal server stores, read without the codec: no plaintext anywhere.
    shown = subprocess.run(
        [
            str(Path(sys.executable).parent / "temporal"),
            "workflow",
            "show",
            "--workflow-id",
            workflow_id,
            "--address",
            settings.temporal_address,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert workflow_id in shown  # it is the history we think it is
    assert marker not in shown
    raw = await connect_temporal(settings)  # no codec
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    assert marker.encode() not in history.to_json().encode()

    # Through the codec server, an operator reads every payload, and that is audited.
    payloads = [
        payload
        for event in history.events
        for payload in (
            list(event.workflow_execution_started_event_attributes.input.payloads)
            + list(event.workflow_execution_signaled_event_attributes.input.payloads)
            + list(event.workflow_execution_completed_event_attributes.result.payloads)
        )
    ]
    assert len(payloads) == 3
    body = json_format.MessageToJson(Payloads(payloads=payloads))
    headers = {"Content-Type": "application/json", "X-Namespace": settings.temporal_namespace}
    anonymous = await api.post("/codec/decode", content=body, headers=headers)
    assert anonymous.status_code == 401
    decoded = await api.post(
        "/codec/decode", content=body, headers={**headers, **logins.headers("olivia")}
    )
    assert decoded.status_code == 200, decoded.text
    plain = json_format.ParseDict(decoded.json(), Payloads())
    texts = [json.loads(p.data) for p in plain.payloads]
    assert texts == [f"{marker}-input", f"{marker}-signal", f"{marker}-input|{marker}-signal"]
    with Session(engine) as session:
        audited = list_audit_events(session, subject=f"namespace:{settings.temporal_namespace}")
    assert any(e.action == "codec.decode" and e.actor == logins.subject("olivia") for e in audited)

    # Bad input is a 422 naming the payloads, not a 500: bytes that are not UTF-8, and a
    # payload marked as ours that does not open.
    olivia = {**headers, **logins.headers("olivia")}
    broken = Payloads(payloads=[Payload(metadata=dict(payloads[0].metadata), data=b"AAAA")])
    for bad in (b"\xff", json_format.MessageToJson(broken).encode()):
        refused = await api.post("/codec/decode", content=bad, headers=olivia)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "payloads"
    # Only JSON: a cross-origin page can send text/plain with the cookie and no preflight.
    before = len(audited)
    plain_text = await api.post(
        "/codec/decode", content=body, headers={**olivia, "Content-Type": "text/plain"}
    )
    assert (plain_text.status_code, plain_text.json()["code"]) == (415, "unsupported_media_type")
    with Session(engine) as session:
        after = list_audit_events(session, subject=f"namespace:{settings.temporal_namespace}")
    assert len(after) == before


async def test_failure_messages_are_encrypted_too(
    settings: Settings, temporal: Client, unique: str
) -> None:
    marker = f"PII-MARKER-{unique}-in-an-error"
    queue = f"test-failure-{unique}"
    async with Worker(temporal, task_queue=queue, workflows=[FailWithMessageWorkflow]):
        handle = await temporal.start_workflow(
            FailWithMessageWorkflow.run, marker, id=f"test-failure-{unique}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert marker in str(failed.value.cause)  # the codec client reads the message back
    history = (
        await (await connect_temporal(settings)).get_workflow_handle(handle.id).fetch_history()
    )
    assert marker not in history.to_json()  # the server stored it encrypted


async def test_only_the_web_ui_origin_gets_cors_and_only_on_the_codec(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    ui = await api.options(
        "/codec/decode", headers={"Origin": settings.temporal_ui_url, **preflight}
    )
    assert ui.status_code == 200
    assert ui.headers["access-control-allow-origin"] == settings.temporal_ui_url
    assert ui.headers["access-control-allow-credentials"] == "true"

    stranger = await api.options(
        "/codec/decode", headers={"Origin": "http://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in stranger.headers
    elsewhere = await api.get("/healthz", headers={"Origin": settings.temporal_ui_url})
    assert "access-control-allow-origin" not in elsewhere.headers


def test_a_missing_secret_stops_the_worker_with_one_line(settings: Settings) -> None:
    assert settings.vault_secret_id is not None
    env = {
        **os.environ,
        "BFC_VAULT_ROLE_ID": settings.vault_role_id or "",
        "BFC_VAULT_SECRET_ID": settings.vault_secret_id.get_secret_value(),
        "BFC_VAULT_SECRETS_PATH": "nowhere",
        "BFC_TASK_QUEUE": f"never-{uuid.uuid4().hex[:6]}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "workers.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"worker: secret {settings.vault_kv_mount}/nowhere/gateway is missing or not readable"
    ]


@contextlib.asynccontextmanager
async def sealed(stack: Stack, settings: Settings) -> AsyncIterator[None]:
    """Vault sealed for the block (as after a restart nobody unsealed), then restarted,
    which unseals it, however the block ends."""
    root = json.loads(stack.vault.init_file.read_text())["root_token"]
    hvac.Client(url=settings.vault_url, token=root).sys.seal()
    try:
        yield
    finally:
        await asyncio.to_thread(stack.down, ("vault",))
        await asyncio.to_thread(stack.up, ("vault",))


def decode_request(payloads: list[Payload], logins: Logins, settings: Settings) -> dict[str, Any]:
    return {
        "content": json_format.MessageToJson(Payloads(payloads=payloads)),
        "headers": {
            "Content-Type": "application/json",
            "X-Namespace": settings.temporal_namespace,
            **logins.headers("olivia"),
        },
    }


@pytest.mark.lifecycle
async def test_vault_away_or_sealed_is_a_503_to_retry_not_a_bad_envelope(
    api: httpx.AsyncClient, logins: Logins, settings: Settings, stack: Stack
) -> None:
    # Written with a data key the API never unwrapped: reading it needs Vault.
    writer = fresh_cipher(settings)
    newcomer = fresh_cipher(settings)  # logged in, no data key yet
    envelope = writer.encrypt(b"Maria Lindqvist")
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'"Maria Lindqvist"')
    request = decode_request(await EnvelopePayloadCodec(writer).encode([payload]), logins, settings)

    for away in (lambda: stopped(stack, "vault"), lambda: sealed(stack, settings)):
        async with away():
            with pytest.raises(KeyServiceUnavailable):
                newcomer.decrypt(envelope)
            with pytest.raises(KeyServiceUnavailable):
                newcomer.encrypt(b"anything")
            refused = await api.post("/codec/decode", **request)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert (refused.json()["code"], refused.headers["Retry-After"]) == ("unavailable", "1")
        newcomer = fresh_cipher(settings)  # its "Vault was away" pause would delay the next

    decoded = await api.post("/codec/decode", **request)
    assert decoded.status_code == 200, decoded.text
    assert json_format.ParseDict(decoded.json(), Payloads()).payloads[0] == payload
    assert newcomer.decrypt(envelope) == b"Maria Lindqvist"


@pytest.mark.lifecycle
async def test_the_data_key_in_use_keeps_encrypting_while_vault_is_away(
    settings: Settings, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(infra.envelope, "VAULT_RETRY_SECONDS", 0.5)
    # A new data key is due after every envelope: each encryption asks Vault first.
    cipher = EnvelopeCipher(connect_vault(settings), settings, key_max_uses=1)
    first = cipher.encrypt(b"one")
    async with stopped(stack, "vault"):
        # Payloads of running payments keep being sealed with the key in use.
        second = cipher.encrypt(b"two")
        third = cipher.encrypt(b"three")
        assert {json.loads(e)["dk"] for e in (first, second, third)} == {json.loads(first)["dk"]}
        assert [cipher.decrypt(e) for e in (second, third)] == [b"two", b"three"]
    await asyncio.sleep(0.5)
    # Vault is back: the next envelope gets a new data key, and the old ones still open.
    fourth = cipher.encrypt(b"four")
    assert json.loads(fourth)["dk"] != json.loads(first)["dk"]
    assert fresh_cipher(settings).decrypt(third) == b"three"
