"""PlatformCheckWorkflow schedules its checks by name and reports what they saw."""

from __future__ import annotations

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.contracts import (
    CHECK_DATABASE,
    CHECK_SECRETS,
    DatabaseCheck,
    PlatformCheckInput,
    SecretsCheck,
)
from workflows.platform_check import PlatformCheckWorkflow


@activity.defn(name=CHECK_DATABASE)
async def database_at_revision() -> DatabaseCheck:
    return DatabaseCheck(schema_revision="0001_audit_log")


@activity.defn(name=CHECK_SECRETS)
async def two_secrets() -> SecretsCheck:
    return SecretsCheck(readable=["gateway", "kyc"])


attempts: list[int] = []


@activity.defn(name=CHECK_SECRETS)
async def vault_down() -> SecretsCheck:
    attempts.append(activity.info().attempt)
    raise ConnectionError("vault unreachable")


async def test_the_result_reports_both_checks(workflow_env: WorkflowEnvironment) -> None:
    queue = f"q-{uuid.uuid4()}"
    async with Worker(
        workflow_env.client,
        task_queue=queue,
        workflows=[PlatformCheckWorkflow],
        activities=[database_at_revision, two_secrets],
    ):
        result = await workflow_env.client.execute_workflow(
            PlatformCheckWorkflow.run,
            PlatformCheckInput(requested_by="olivia"),
            id=f"check-{uuid.uuid4()}",
            task_queue=queue,
        )
    assert result.requested_by == "olivia"
    assert result.schema_revision == "0001_audit_log"
    assert result.secrets_readable == ["gateway", "kyc"]
    assert result.checked_at.tzinfo is not None


async def test_an_outage_fails_the_check_after_three_attempts(
    workflow_env: WorkflowEnvironment,
) -> None:
    attempts.clear()
    queue = f"q-{uuid.uuid4()}"
    async with Worker(
        workflow_env.client,
        task_queue=queue,
        workflows=[PlatformCheckWorkflow],
        activities=[database_at_revision, vault_down],
    ):
        with pytest.raises(WorkflowFailureError):
            await workflow_env.client.execute_workflow(
                PlatformCheckWorkflow.run,
                PlatformCheckInput(requested_by="olivia"),
                id=f"check-{uuid.uuid4()}",
                task_queue=queue,
            )
    # A check must report an outage promptly, not retry for ever.
    assert attempts == [1, 2, 3]
