"""Temporal's time-skipping test server, one per test (see tests/helpers/time_skipping.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.helpers.time_skipping import fresh_environment


@pytest.fixture
async def workflow_env() -> AsyncIterator[WorkflowEnvironment]:
    async with fresh_environment() as env:
        yield env
