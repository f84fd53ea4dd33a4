"""PlatformCheckWorkflow: one round trip through Temporal, a worker, PostgreSQL and Vault.

Operators start it (``bfc status`` and the test suite do) to prove that the running worker
can reach what the payment sagas need. It has no side effects.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from models.contracts import (
    CHECK_DATABASE,
    CHECK_SECRETS,
    PLATFORM_CHECK_WORKFLOW,
    DatabaseCheck,
    PlatformCheckInput,
    PlatformCheckResult,
    SecretsCheck,
)

# A check reports the state of things now; retrying for long would hide an outage.
_CHECK_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=200))


@workflow.defn(name=PLATFORM_CHECK_WORKFLOW)
class PlatformCheckWorkflow:
    @workflow.run
    async def run(self, check: PlatformCheckInput) -> PlatformCheckResult:
        database = await workflow.execute_activity(
            CHECK_DATABASE,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=_CHECK_RETRY,
            result_type=DatabaseCheck,
        )
        secrets = await workflow.execute_activity(
            CHECK_SECRETS,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=_CHECK_RETRY,
            result_type=SecretsCheck,
        )
        return PlatformCheckResult(
            requested_by=check.requested_by,
            checked_at=workflow.now(),
            schema_revision=database.schema_revision,
            secrets_readable=secrets.readable,
        )
