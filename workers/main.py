"""The worker process: wires settings -> infra -> activities and runs the Temporal worker.

This is the only place where workflows, activity implementations and their dependencies
meet.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from temporalio.worker import Worker

from activities.platform_check import PlatformCheckActivities
from infra.db import create_db_engine
from infra.settings import Settings, get_settings
from infra.temporal import connect_temporal
from infra.vault import SecretStore, SecretsUnavailable, connect_vault
from workflows.platform_check import PlatformCheckWorkflow

log = logging.getLogger("bfc.worker")


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    vault = connect_vault(settings)
    engine = create_db_engine(settings)
    checks = PlatformCheckActivities(engine, SecretStore(vault, settings))
    client = await connect_temporal(settings)
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="activity") as pool:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[PlatformCheckWorkflow],
            activities=[checks.check_database, checks.check_secrets],
            activity_executor=pool,
        )
        async with worker:
            log.info("worker polling task queue %s", settings.task_queue)
            await stop.wait()
    engine.dispose()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    stop = asyncio.Event()

    async def _main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    try:
        asyncio.run(_main())
    except SecretsUnavailable as exc:
        print(f"worker: {exc}", file=sys.stderr)  # noqa: T201 - the one line a person reads
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
