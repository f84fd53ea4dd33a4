"""Compliance review: the case, the people who decide it, and what it ends in.

All of it is data that travels through Temporal (inputs, update arguments, query results),
so it holds ids, codes and amounts only: no names, no documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

REVIEW_WORKFLOW = "ComplianceReviewWorkflow"
RECORD_REVIEW_EVENT = "record_review_event"
NOTIFY_SUPERVISORS = "notify_supervisors"

ReviewKind = Literal["payment", "onboarding"]
Decision = Literal["approve", "reject", "request_info"]
Outcome = Literal["approved", "rejected"]
ReviewStatusName = Literal[
    "open", "info_requested", "escalated", "approved", "rejected", "withdrawn"
]

OFFICER_ROLE = "compliance_officer"
SUPERVISOR_ROLE = "admin"  # may assign cases to other officers


@dataclass(frozen=True)
class Actor:
    """Who acts: the caller's identity as data (never their token)."""

    subject: str
    username: str | None
    roles: list[str]


@dataclass(frozen=True)
class ReviewReason:
    code: str  # e.g. amount_over_review_threshold, sanctions_possible_match
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlaPolicy:
    """Seconds from opening: first escalation, second escalation, default outcome."""

    first_escalation_seconds: int = 4 * 3600
    second_escalation_seconds: int = 24 * 3600
    expiry_seconds: int = 72 * 3600


@dataclass(frozen=True)
class OpenReviewInput:
    review_id: str
    kind: ReviewKind
    subject_id: str  # pay_… or onb_…
    customer_subject: str  # the Keycloak subject of the customer the case concerns
    reasons: list[ReviewReason]
    required_approvals: int = 1
    amount_minor: int | None = None
    currency: str | None = None
    sla: SlaPolicy = field(default_factory=SlaPolicy)
    default_outcome: Outcome = "rejected"
    # Others the outcome concerns (a transfer's beneficiary): as the customer, never the
    # case's officer or assignee.
    related_subjects: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DecideInput:
    actor: Actor
    reason: str


@dataclass(frozen=True)
class AssignInput:
    actor: Actor
    assignee: str  # subject of the officer who takes the case


@dataclass(frozen=True)
class CommentInput:
    actor: Actor
    text: str


@dataclass(frozen=True)
class DecisionRecord:
    actor: str
    decision: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class ReviewState:
    review_id: str
    kind: ReviewKind
    subject_id: str
    reasons: list[ReviewReason]
    amount_minor: int | None
    currency: str | None
    status: ReviewStatusName
    assignee: str | None
    approvals: list[str]
    required_approvals: int
    escalations: int
    due_at: datetime | None
    history: list[DecisionRecord]


@dataclass(frozen=True)
class ReviewOutcome:
    review_id: str
    outcome: Outcome
    decided_by: list[str]
    sla_expired: bool
    closed_at: datetime


@dataclass(frozen=True)
class EscalationNotice:
    review_id: str
    kind: ReviewKind
    level: int
    next_due_at: datetime | None


@dataclass(frozen=True)
class ReviewEvent:
    """One line of the case's audit trail, written by an activity."""

    review_id: str
    actor: str
    action: str
    details: dict[str, Any] = field(default_factory=dict)


def required_approvals(amount_minor: int | None, four_eyes_threshold_minor: int) -> int:
    """Four-eyes: two officers must approve a case about more than the threshold."""
    return 2 if amount_minor is not None and amount_minor > four_eyes_threshold_minor else 1
