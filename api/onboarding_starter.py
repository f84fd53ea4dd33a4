"""Starting each received application's OnboardingWorkflow, once, and telling it of the
documents sent later, whatever stops in between.

The same promise as a payment's (``api/payment_starter.py``): ``POST /v1/onboarding``
answers 202 once the application and the applicant's encrypted personal data are committed,
starts the workflow (id = the application id) right after and stamps the row
``saga_started_at``. An application still ``received`` and unstamped past ``grace`` (the
API stopped in between, Temporal was unreachable) is started by the sweep, which runs in
the payments' sweep loop. A start is idempotent, so two sweeps, or a sweep and an app
sending its request again, start one workflow.

Documents likewise: ``POST /v1/onboarding/{id}/documents`` answers 202 once the document is
sealed into the applicant's data (the row is marked ``documents_unsignalled_since``), then
signals the workflow and clears the mark. A mark left past ``grace`` (Temporal unreachable,
the workflow not started yet) is signalled by the sweep. The workflow takes the signal
once; another is ignored, so telling it twice costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from api.payment_starter import call_or_leave, start_once
from infra.onboarding_store import OnboardingStore, StoredApplication
from models.onboarding import (
    DOCUMENTS_SUBMITTED_SIGNAL,
    ONBOARDING_WORKFLOW,
    DocumentsSubmitted,
    OnboardingInput,
)

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
        started = await call_or_leave(
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

    async def tell_documents(
        self, onboarding_id: str, document_type: str, *, started: bool = False
    ) -> bool:
        """Signal the workflow that the documents are in and clear the row's mark. False if
        Temporal could not be reached or the workflow is not started yet: the sweep will.
        ``started``: the row says the workflow was started, so one Temporal does not know
        has ended (an operator may terminate it) and there is no one left to tell."""

        async def signal(client: Client) -> None:
            try:
                await client.get_workflow_handle(onboarding_id).signal(
                    DOCUMENTS_SUBMITTED_SIGNAL, DocumentsSubmitted(document_type=document_type)
                )
            except RPCError as exc:
                if not (started and exc.status == RPCStatusCode.NOT_FOUND):
                    raise
                log.warning("application %s: workflow gone, documents not told", onboarding_id)

        told = await call_or_leave(
            self._temporal, signal, f"documents of application {onboarding_id}"
        )
        if told:
            await asyncio.to_thread(self._store.mark_documents_signalled, onboarding_id)
        return told

    async def sweep(self, limit: int = 100) -> int:
        """Start the applications left unstarted past the grace period, then tell the
        workflows of the documents left untold; how many of both."""
        stranded = await asyncio.to_thread(
            self._store.not_started, older_than=self._grace, limit=limit
        )
        done = 0
        for application in stranded:
            if not await self.start(application):
                return done  # Temporal is away: the next sweep tries again
            log.info("application %s: workflow started by the sweep", application.id)
            done += 1
        untold = await asyncio.to_thread(
            self._store.documents_unsignalled, older_than=self._grace, limit=limit
        )
        for application in untold:
            data = await asyncio.to_thread(self._store.personal_data, application.customer_id)
            if not await self.tell_documents(application.id, data.document_type, started=True):
                break
            log.info("application %s: told of its documents by the sweep", application.id)
            done += 1
        return done
