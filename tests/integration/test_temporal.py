"""Temporal: the dev server runs our workflows and knows our search attributes."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from infra.migrations.runner import head_revision
from infra.settings import SEARCH_ATTRIBUTES, Settings
from models.contracts import PLATFORM_CHECK_WORKFLOW, PlatformCheckInput, PlatformCheckResult


async def test_the_stack_worker_runs_the_platform_check(
    temporal: Client, settings: Settings, unique: str
) -> None:
    result = await temporal.execute_workflow(
        PLATFORM_CHECK_WORKFLOW,
        PlatformCheckInput(requested_by="pytest"),
        id=f"check-{unique}",
        task_queue=settings.task_queue,
        result_type=PlatformCheckResult,
    )
    # The worker process read the schema from PostgreSQL and listed Vault secrets with its
    # own AppRole login: both ends of the round trip are real.
    assert result.requested_by == "pytest"
    assert result.schema_revision == head_revision()
    assert {"gateway", "keycloak", "kyc", "smtp", "webhooks"} <= set(result.secrets_readable)


async def test_custom_search_attributes_are_registered(
    temporal: Client, settings: Settings
) -> None:
    response = await temporal.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=settings.temporal_namespace)
    )
    registered = {
        name: IndexedValueType.Name(kind).removeprefix("INDEXED_VALUE_TYPE_")
        for name, kind in response.custom_attributes.items()
    }
    expected = {name: kind.upper() for name, kind in SEARCH_ATTRIBUTES.items()}
    assert {name: registered.get(name) for name in expected} == expected
