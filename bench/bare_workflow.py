"""The payments benchmark's baseline: a workflow of a transfer's shape with nothing inside.

A ``transfer`` PaymentWorkflow runs five local activities: score -> hold -> post -> record
(the row with its terminal event), then ``announce`` mails the customer. ``BareWorkflow``
runs five local activities that do nothing, with the saga's timeout and retry policy, and
starts nothing else: what Temporal itself costs for that shape on this machine.
``bench/payments.py`` runs it on a worker of its own (same ``worker_tuning()`` as the
platform's worker, outside the sandbox like ``PaymentWorkflow``) and compares.

Only ``temporalio`` and the standard library are imported here.

Run directly, it starts a few bare workflows one after another on an in-process worker and
prints each one's start-to-result time, a quick probe of Temporal's latency at zero load:

    .venv/bin/python -m bench.bare_workflow [COUNT]
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

BARE_WORKFLOW = "BenchBareWorkflow"
NOOP_ACTIVITY = "bench_noop"
# The transfer saga's local activities, in order.
STEPS = ("score", "hold", "post", "record", "email_customer")

# As the saga's quick steps (workflows/payment.py: ``_quick``).
_TIMEOUT = timedelta(seconds=10)
_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)


@activity.defn(name=NOOP_ACTIVITY)
async def noop(step: str) -> str:
    return step


@workflow.defn(name=BARE_WORKFLOW, sandboxed=False)
class BareWorkflow:
    @workflow.run
    async def run(self, run_id: str) -> int:
        done = 0
        for step in STEPS:
            await workflow.execute_local_activity(
                NOOP_ACTIVITY, step, start_to_close_timeout=_TIMEOUT, retry_policy=_RETRY
            )
            done += 1
        return done


async def _probe(count: int) -> None:
    import time
    import uuid

    from temporalio.worker import Worker

    from infra.settings import Settings
    from infra.temporal import connect_temporal
    from workers.main import worker_tuning

    client = await connect_temporal(Settings())
    queue = f"bench-bare-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[BareWorkflow], activities=[noop], **worker_tuning()
    ):
        for i in range(count):
            started = time.perf_counter()
            handle = await client.start_workflow(
                BareWorkflow.run, queue, id=f"{queue}-{i}", task_queue=queue
            )
            await handle.result()
            print(f"{handle.id}: {(time.perf_counter() - started) * 1000:.1f} ms")


if __name__ == "__main__":
    import asyncio
    import sys

    asyncio.run(_probe(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
