"""Recorded histories still replay against today's workflow code.

A change that would make a running case take a different path (a reordered activity, a
new timer without ``workflow.patched``) fails here before it reaches a worker. To record
a new history, run a case to completion and save ``(await handle.fetch_history()).to_json()``
under ``histories/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from infra.temporal import platform_data_converter
from workflows.ledger_maintenance import LedgerRollUpWorkflow
from workflows.notification import EventDeliveryWorkflow
from workflows.onboarding import OnboardingWorkflow
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow
from workflows.review import ComplianceReviewWorkflow

# Every workflow the worker runs (workers/main.py): a history replays against its own type.
WORKFLOWS = [
    ComplianceReviewWorkflow,
    PaymentWorkflow,
    RefundWorkflow,
    OnboardingWorkflow,
    EventDeliveryWorkflow,
    LedgerRollUpWorkflow,
]

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("history", HISTORIES, ids=[h.stem for h in HISTORIES])
async def test_recorded_history_replays(history: Path) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=platform_data_converter())
    await replayer.replay_workflow(WorkflowHistory.from_json(history.stem, history.read_text()))


def test_there_is_a_full_review_case_to_replay() -> None:
    assert any(h.stem == "review_full_case" for h in HISTORIES)


def test_each_recorded_payment_path_is_there_to_replay() -> None:
    # Recorded by tests/workflows/record_payment_histories.py, one file per path.
    from tests.workflows.record_payment_histories import PATHS

    assert {f"payment_{name}" for name in PATHS} <= {h.stem for h in HISTORIES}
