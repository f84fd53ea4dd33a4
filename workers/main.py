"""The worker process: wires settings -> infra -> activities and runs the Temporal worker.

This is the only place where workflows, activity implementations and their dependencies
meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import uvloop
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.worker import Worker

from activities.identity import IdentityActivities
from activities.ledger_maintenance import LedgerMaintenanceActivities
from activities.notify import NotifyActivities
from activities.onboarding import OnboardingActivities
from activities.payment import PaymentActivities
from activities.platform_check import PlatformCheckActivities
from activities.review import ReviewActivities
from infra.db import create_db_engine
from infra.envelope import EnvelopeCipher
from infra.event_log import EventLog
from infra.fraud_model import ensure_model
from infra.gateway import CardGateway
from infra.identity import IdentityDirectory, MailAddresses
from infra.kyc import KycProvider
from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.notifier import Notifier
from infra.onboarding_store import OnboardingStore
from infra.payment_store import PaymentStore
from infra.sanctions import SanctionsList, Screener
from infra.settings import Settings, get_settings
from infra.temporal import connect_temporal
from infra.vault import SecretStore, SecretsUnavailable, connect_vault, load_platform_secrets
from infra.webhook_store import WebhookStore
from infra.webhooks import WebhookSender, create_webhook_client
from models.contracts import LEDGER_ROLL_UP_SCHEDULE
from workflows.ledger_maintenance import LedgerRollUpWorkflow
from workflows.notification import EventDeliveryWorkflow
from workflows.onboarding import OnboardingWorkflow
from workflows.payment import PaymentWorkflow
from workflows.platform_check import PlatformCheckWorkflow
from workflows.refund import RefundWorkflow
from workflows.review import ComplianceReviewWorkflow

log = logging.getLogger("bfc.worker")


async def ensure_schedules(client: Client, settings: Settings) -> None:
    """Create the platform's schedules once; an existing schedule is left as operators set it."""
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            LEDGER_ROLL_UP_SCHEDULE,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    LedgerRollUpWorkflow.run,
                    id=LEDGER_ROLL_UP_SCHEDULE,
                    task_queue=settings.task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=1))]),
                # A roll-up still running when the next is due: skip, the next catches up.
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )


def worker_tuning() -> dict[str, Any]:
    """The worker's concurrency settings, shared with the benchmark's bare-Temporal worker so
    the two are compared like for like."""
    return {
        "max_concurrent_workflow_tasks": 100,
        "max_concurrent_activities": 100,
        "max_concurrent_local_activities": 200,
        # More pollers than the defaults keep tasks from queueing behind one long poll.
        "max_concurrent_workflow_task_polls": 8,
        "max_concurrent_activity_task_polls": 8,
    }


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    vault = connect_vault(settings)
    secrets = load_platform_secrets(SecretStore(vault, settings))  # stop now if one is missing
    cipher = EnvelopeCipher(vault, settings)
    engine = create_db_engine(settings)
    ledger_pool = create_ledger_pool(settings)
    await ledger_pool.open()
    checks = PlatformCheckActivities(engine, SecretStore(vault, settings))
    ledger = LedgerStore(ledger_pool)
    maintenance = LedgerMaintenanceActivities(ledger)
    reviews = ReviewActivities(
        engine,
        Notifier(settings),
        supervisors=settings.review_supervisors,
        ui_url=settings.temporal_ui_url,
    )
    directory = IdentityDirectory.connect(
        settings,
        client_id=secrets["keycloak"]["client_id"],
        client_secret=secrets["keycloak"]["client_secret"],
    )
    identity = IdentityActivities(directory, engine)
    webhook_http = create_webhook_client(settings)
    notify = NotifyActivities(
        WebhookStore(engine, cipher),
        EventLog(ledger_pool),
        WebhookSender(
            webhook_http,
            secrets["webhooks"]["signing_secret"],
            allow_private_addresses=settings.webhooks_allow_private_addresses,
            allow_http=settings.webhooks_allow_http,
        ),
        Notifier(settings),
        MailAddresses(directory.mail_address),
    )
    # The fraud model: loaded once per process (trained first on a machine that has none).
    scorer = await asyncio.to_thread(ensure_model, settings.fraud_model_path, settings.fraud_seed)
    gateway = CardGateway.from_settings(settings, secrets["gateway"]["api_key"])
    payments = PaymentActivities(
        ledger,
        PaymentStore(ledger_pool),
        gateway,
        scorer,
        policy=settings.risk_policy(),
    )
    kyc = KycProvider.from_settings(settings, api_key=secrets["kyc"]["api_key"])
    # A list that does not load stops the start: screening against nothing is no screening.
    screener = Screener(SanctionsList.load(settings.sanctions_list_path))
    onboarding = OnboardingActivities(
        OnboardingStore(engine, cipher),
        directory,
        kyc,
        screener,
        ledger,
        Notifier(settings),
        callback_url=f"{settings.api_url}/v1/kyc/callbacks",
    )
    client = await connect_temporal(settings, cipher)
    await ensure_schedules(client, settings)
    try:
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="activity") as pool:
            worker = Worker(
                client,
                task_queue=settings.task_queue,
                workflows=[
                    PlatformCheckWorkflow,
                    LedgerRollUpWorkflow,
                    ComplianceReviewWorkflow,
                    PaymentWorkflow,
                    RefundWorkflow,
                    EventDeliveryWorkflow,
                    OnboardingWorkflow,
                ],
                activities=[
                    checks.check_database,
                    checks.check_secrets,
                    maintenance.roll_up_balances,
                    maintenance.release_expired_holds,
                    identity.create_user,
                    identity.enable_user,
                    identity.disable_user,
                    identity.assign_realm_role,
                    reviews.record_review_event,
                    reviews.notify_supervisors,
                    payments.score_payment,
                    payments.hold_funds,
                    payments.post_hold,
                    payments.void_hold,
                    payments.charge_card,
                    payments.find_charge,
                    payments.send_payout,
                    payments.find_payout,
                    payments.refund_charge,
                    payments.record_payment,
                    payments.record_refund,
                    payments.record_refund_outcome,
                    notify.record_event,
                    notify.deliver_webhook,
                    notify.email_customer,
                    onboarding.create_applicant_user,
                    onboarding.start_kyc_check,
                    onboarding.get_kyc_verification,
                    onboarding.screen_applicant,
                    onboarding.activate_customer,
                    onboarding.notify_applicant,
                    onboarding.record_onboarding,
                ],
                activity_executor=pool,
                **worker_tuning(),
            )
            async with worker:
                log.info("worker polling task queue %s", settings.task_queue)
                await stop.wait()
    finally:
        await gateway.aclose()
        await webhook_http.aclose()
        await kyc.aclose()
        await ledger.close()
        await ledger_pool.close()
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
        # libuv's loop: the activities' sockets (PostgreSQL, SMTP, HTTP) cost less CPU on it.
        uvloop.run(_main())
    except SecretsUnavailable as exc:
        print(f"worker: {exc}", file=sys.stderr)  # noqa: T201 - the one line a person reads
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
