"""`bfc up` is idempotent and `bfc down` + `bfc up` keeps every service's data.

Runs last (marker ``lifecycle``): it stops and restarts the whole stack through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus

from infra.audit import list_audit_events, record_audit_event
from infra.envelope import EnvelopeCipher
from infra.keycloak import TokenVerifier, password_login
from infra.settings import Settings
from infra.stack.process import port_is_open
from infra.temporal import connect_temporal
from infra.vault import TransitCipher, connect_vault
from models.contracts import PLATFORM_CHECK_WORKFLOW, PlatformCheckInput, PlatformCheckResult

pytestmark = pytest.mark.lifecycle

BFC = str(Path(sys.executable).parent / "bfc")


def bfc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BFC, *args], capture_output=True, text=True, timeout=600, check=False)


def status() -> dict[str, dict[str, object]]:
    done = bfc("status", "--json")
    services: dict[str, dict[str, object]] = json.loads(done.stdout)["services"]
    return services


def test_up_twice_starts_nothing_the_second_time(settings: Settings) -> None:
    before = status()
    assert all(s["state"] == "healthy" for s in before.values()), before
    again = bfc("up")
    assert again.returncode == 0, again.stderr
    assert "started: nothing" in again.stdout
    after = status()
    assert {n: s["pid"] for n, s in after.items()} == {n: s["pid"] for n, s in before.items()}


async def test_down_then_up_keeps_the_data(
    settings: Settings, engine: Engine, temporal: Client, unique: str
) -> None:
    subject = f"pay_{unique}"
    with Session(engine) as session:
        record_audit_event(session, actor="pytest", action="lifecycle.before_down", subject=subject)
        session.commit()
    ciphertext = TransitCipher(connect_vault(settings), settings).encrypt(b"kept across restarts")
    workflow_id = f"check-{unique}"
    await temporal.execute_workflow(
        PLATFORM_CHECK_WORKFLOW,
        PlatformCheckInput(requested_by="lifecycle"),
        id=workflow_id,
        task_queue=settings.task_queue,
        result_type=PlatformCheckResult,
    )
    engine.dispose()

    down = bfc("down")
    assert down.returncode == 0, down.stderr
    assert all(s["state"] == "stopped" for s in status().values())
    ports = (
        settings.temporal_port,
        settings.postgres_port,
        settings.vault_port,
        settings.keycloak_port,
        settings.api_port,
    )
    for port in ports:
        assert not port_is_open(settings.host, port), f"port {port} still open after down"

    up = bfc("up")
    assert up.returncode == 0, up.stderr
    assert all(s["state"] == "healthy" for s in status().values())

    with Session(engine) as session:
        events = list_audit_events(session, subject=subject)
    assert [e.action for e in events] == ["lifecycle.before_down"]
    # Same Transit key after a restart: the raft storage kept it (dev mode would not).
    cipher = TransitCipher(connect_vault(settings), settings)
    assert cipher.decrypt(ciphertext) == b"kept across restarts"
    # Temporal's SQLite file kept the finished workflow and its result.
    # A fresh cipher: the payloads' data keys are unwrapped by the restarted Vault.
    client = await connect_temporal(settings, EnvelopeCipher(connect_vault(settings), settings))
    handle = client.get_workflow_handle(workflow_id, result_type=PlatformCheckResult)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert (await handle.result()).requested_by == "lifecycle"
    # Keycloak kept its realm and users.
    token = password_login(settings, "carol", "dev-carol")
    assert TokenVerifier(settings).verify(token).roles == {"compliance_officer"}
