"""Starting each received application's OnboardingWorkflow, once, whatever stops in between.

The same promise as a payment's (``api/payment_starter.py``): ``POST /v1/onboarding``
answers 202 once the application and the applicant's encrypted personal data are committed,
starts the workflow (id = the application id) right after and stamps the row
``saga_started_at``. An application still ``received`` and unstamped past ``grace`` (the
API stopped in between, Temporal was unreachable) is started by the sweep, which runs in
the payments' sweep loop. A start is idempotent, so two sweeps, or a sweep and an app
sending its request again, start one workflow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from api.payment_starter import start_once, start_or_leave
from infra.onboarding_store import OnboardingStore, StoredApplication
from models.onboarding import ONBOARDING_WORKFLOW, OnboardingInput

log = logging.getLogger(__name__)

ONBOARDING_STATUS = SearchAttributeKey.for_keyword("OnboardingStatus")


class ApplicationStarter:
    """Starts applications' workflows for one API process (module docstring)."""

    def __init__(
        self,
        store: OnboardingStore,
        temporal: Callable[[], Awaitable[Client | None]],
        *,
        task_queue: str,
        grace: timedelta = timedelta(seconds=5),
    ) -> None:
        self._store = store
        self._temporal = temporal
        self._task_queue = task_queue
        self._grace = grace

    async def start(self, application: StoredApplication) -> bool:
        """Start the workflow (or find it started) and stamp the row. False if Temporal
        could not be reached, which leaves the application to the sweep."""
        request = OnboardingInput(
            onboarding_id=application.id,
            customer_id=application.customer_id,
            client_id=application.client_id,
            country=application.country,
            currency=application.currency,
            documents_provided=not application.missing,
        )
        started = await start_or_leave(
            self._temporal,
            lambda client: start_once(
                client,
                ONBOARDING_WORKFLOW,
                request,
                id=application.id,
                task_queue=self._task_queue,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(ONBOARDING_STATUS, "received")]
                ),
            ),
            f"application {application.id}",
        )
        if started:
            await asyncio.to_thread(self._store.mark_started, application.id)
        return started

    async def sweep(self, limit: int = 100) -> int:
        """Start the applications left unstarted past the grace period; how many."""
        stranded = await asyncio.to_thread(
            self._store.not_started, older_than=self._grace, limit=limit
        )
        started = 0
        for application in stranded:
            if not await self.start(application):
                break  # Temporal is away: the next sweep tries again
            log.info("application %s: workflow started by the sweep", application.id)
            started += 1
        return started
