"""Onboarding applications in PostgreSQL, their customers' personal data sealed.

The schema is owned by the migration ``0006_onboarding``; the tables below describe it for
SQLAlchemy Core. Methods are synchronous: activities call them from the worker's thread
pool, the API through ``asyncio.to_thread``.

Idempotency: an application is keyed by ``(scope, Idempotency-Key)`` where the scope is the
app that applied. The customer row, the application and the key row are written in one
transaction; a concurrent duplicate waits on the key's primary key, rolls back its own rows
and finds the first request's application. The same key with another body is refused.

Every state the saga records is written to the audit log in the same transaction
(``onboarding.<status>``), with ids, codes and the screening summary (the listed entry's
name, never the applicant's) for compliance officers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    ForeignKey,
    MetaData,
    Table,
    Text,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.engine import RowMapping
from sqlmodel import Session

from infra.audit import record_audit_event, write_audit_event
from infra.customer_store import add_customer, personal_data_of, seal
from infra.envelope import EnvelopeCipher
from infra.payment_store import IdempotencyKeyReused
from models.contracts import PersonalData
from models.errors import BusinessRuleError
from models.onboarding import TERMINAL_ONBOARDING, OnboardingRecord
from models.tables import CustomerRow

# Kept apart from SQLModel.metadata: Alembic's environment compares that one with the
# database, and these tables are written by hand in the migration.
metadata = MetaData()

onboarding_applications = Table(
    "onboarding_applications",
    metadata,
    Column("id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("client_id", Text),
    Column("status", Text, nullable=False),
    Column("country", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("user_id", Text),
    Column("risk_tier", Text),
    Column("risk_reasons", ARRAY(Text), nullable=False),
    Column("missing", ARRAY(Text), nullable=False),
    Column("kyc_verification_id", Text),
    Column("kyc_verdict", Text),
    Column("screening", JSONB),
    Column("review_id", Text),
    Column("decision_reason", Text),
    Column("wallet_account_id", Text),
    Column("password_email_sent_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True)),
    Column("saga_started_at", DateTime(timezone=True)),  # None: its workflow not started yet
    # Set when a document is stored, cleared once the workflow has been told (signal).
    Column("documents_unsignalled_since", DateTime(timezone=True)),
)

onboarding_requests = Table(
    "onboarding_requests",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("onboarding_id", Text, ForeignKey("onboarding_applications.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

DOCUMENT = "document"  # what ``missing`` lists while the identity document is outstanding
# The customer row's status while the application runs, and once it is decided.
APPLICANT = "applicant"
CUSTOMER_STATUS = {
    "approved": "active",
    "rejected": "rejected",
    "expired": "closed",
    "canceled": "closed",
}


class ApplicationClosed(BusinessRuleError):
    """The application is decided (approved, rejected, expired, canceled): nothing changes it."""

    code = "onboarding_closed"
    status = 409


class DocumentOnFile(BusinessRuleError):
    """The application has its identity document (KYC may have verified it): another one
    would replace what was checked."""

    code = "document_on_file"
    status = 409


class UnknownApplication(LookupError):
    pass


@dataclass(frozen=True)
class StoredApplication:
    id: str
    customer_id: str
    client_id: str | None
    status: str
    country: str
    currency: str
    user_id: str | None
    risk_tier: str | None
    risk_reasons: list[str]
    missing: list[str]
    kyc_verification_id: str | None
    kyc_verdict: str | None
    screening: dict[str, Any] | None  # a ScreeningSummary as JSON
    review_id: str | None
    decision_reason: str | None
    wallet_account_id: str | None
    password_email_sent_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    saga_started_at: datetime | None
    documents_unsignalled_since: datetime | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_ONBOARDING


def _application(row: RowMapping) -> StoredApplication:
    values = {name: row[name] for name in StoredApplication.__dataclass_fields__}
    values["risk_reasons"] = list(values["risk_reasons"])
    values["missing"] = list(values["missing"])
    return StoredApplication(**values)


class _KeyTaken(Exception):
    """Inside ``apply``: another request owns the key; roll back and read theirs."""


class OnboardingStore:
    def __init__(self, engine: Engine, cipher: EnvelopeCipher) -> None:
        self._engine = engine
        self._cipher = cipher

    # -- the API --------------------------------------------------------------------------
    def apply(
        self,
        *,
        onboarding_id: str,
        customer_id: str,
        client_id: str | None,
        scope: str,
        key: str,
        request_hash: str,
        data: PersonalData,
        country: str,
        currency: str,
        documents_provided: bool,
    ) -> tuple[StoredApplication, bool]:
        """The application for this key: newly created (True) or the one a retry refers to.

        Without a document (``documents_provided`` False) the document fields of ``data``
        are stored empty and ``missing`` lists the document.
        """
        if documents_provided and not (data.document_type and data.document_number):
            raise ValueError("documents_provided, but the document's type or number is empty")
        if not documents_provided:
            data = dataclasses.replace(data, document_type="", document_number="")
        try:
            with Session(self._engine) as session:
                add_customer(
                    session, self._cipher, customer_id=customer_id, status=APPLICANT, data=data
                )
                conn = session.connection()
                row = (
                    conn.execute(
                        onboarding_applications.insert()
                        .values(
                            id=onboarding_id,
                            customer_id=customer_id,
                            client_id=client_id,
                            status="received",
                            country=country,
                            currency=currency,
                            risk_reasons=[],
                            missing=[] if documents_provided else [DOCUMENT],
                        )
                        .returning(*onboarding_applications.c)
                    )
                    .mappings()
                    .one()
                )
                claimed = conn.execute(
                    insert(onboarding_requests)
                    .values(
                        scope=scope,
                        idempotency_key=key,
                        request_hash=request_hash,
                        onboarding_id=onboarding_id,
                    )
                    .on_conflict_do_nothing()
                    .returning(onboarding_requests.c.onboarding_id)
                ).one_or_none()
                if claimed is None:
                    raise _KeyTaken
                record_audit_event(
                    session,
                    actor=scope,
                    action="onboarding.received",
                    subject=onboarding_id,
                    details={
                        "customer_id": customer_id,
                        "client_id": client_id,
                        "country": country,
                        "currency": currency,
                        "missing": list(row["missing"]),
                    },
                )
                session.commit()
                return _application(row), True
        except _KeyTaken:
            pass  # the session rolled back: our customer and application rows are gone
        return self._existing(scope, key, request_hash), False

    def _existing(self, scope: str, key: str, request_hash: str) -> StoredApplication:
        statement = (
            select(onboarding_requests.c.request_hash, onboarding_applications)
            .join(
                onboarding_applications,
                onboarding_applications.c.id == onboarding_requests.c.onboarding_id,
            )
            .where(
                onboarding_requests.c.scope == scope,
                onboarding_requests.c.idempotency_key == key,
            )
        )
        with self._engine.connect() as conn:
            row = conn.execute(statement).mappings().one_or_none()
        if row is None:  # keys are never deleted; the conflicting row must be there
            raise RuntimeError(f"idempotency key of {scope} vanished")
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used for another application")
        return _application(row)

    def mark_started(self, onboarding_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                onboarding_applications.update()
                .where(
                    onboarding_applications.c.id == onboarding_id,
                    onboarding_applications.c.saga_started_at.is_(None),
                )
                .values(saga_started_at=func.now())
            )

    def not_started(self, *, older_than: timedelta, limit: int) -> list[StoredApplication]:
        """Applications still ``received`` whose workflow was not started within
        ``older_than``, oldest first (the partial index ``onboarding_saga_not_started``)."""
        c = onboarding_applications.c
        statement = (
            select(onboarding_applications)
            .where(
                c.saga_started_at.is_(None),
                c.status == "received",
                c.created_at < func.now() - older_than,
            )
            .order_by(c.created_at)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_application(row) for row in conn.execute(statement).mappings()]

    def mark_documents_signalled(self, onboarding_id: str) -> None:
        """The workflow knows its documents are in; later sends change nothing there."""
        with self._engine.begin() as conn:
            conn.execute(
                onboarding_applications.update()
                .where(
                    onboarding_applications.c.id == onboarding_id,
                    onboarding_applications.c.documents_unsignalled_since.is_not(None),
                )
                .values(documents_unsignalled_since=None)
            )

    def documents_unsignalled(
        self, *, older_than: timedelta, limit: int
    ) -> list[StoredApplication]:
        """Open applications with a document stored ``older_than`` ago whose started
        workflow was not told of it, oldest first (``onboarding_documents_unsignalled``).
        An unstarted one waits for its start, which reads ``missing`` from the row."""
        c = onboarding_applications.c
        statement = (
            select(onboarding_applications)
            .where(
                c.documents_unsignalled_since < func.now() - older_than,
                c.saga_started_at.is_not(None),
                c.status.not_in(TERMINAL_ONBOARDING),
            )
            .order_by(c.documents_unsignalled_since)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_application(row) for row in conn.execute(statement).mappings()]

    def get(self, onboarding_id: str) -> StoredApplication | None:
        statement = select(onboarding_applications).where(
            onboarding_applications.c.id == onboarding_id
        )
        with self._engine.connect() as conn:
            row = conn.execute(statement).mappings().one_or_none()
        return None if row is None else _application(row)

    def add_document(
        self, onboarding_id: str, document_type: str, number: str
    ) -> StoredApplication:
        """Seal the identity document into the applicant's personal data and strike it off
        what is missing; the application as it now is. Refused once it is decided."""
        with Session(self._engine) as session:
            conn = session.connection()
            application = (
                conn.execute(
                    select(onboarding_applications)
                    .where(onboarding_applications.c.id == onboarding_id)
                    .with_for_update()
                )
                .mappings()
                .one_or_none()
            )
            if application is None:
                raise UnknownApplication(onboarding_id)
            if application["status"] in TERMINAL_ONBOARDING:
                raise ApplicationClosed(f"application {onboarding_id} is {application['status']}")
            customer = session.get(CustomerRow, application["customer_id"], with_for_update=True)
            if customer is None:  # the foreign key makes this a broken database
                raise RuntimeError(f"application {onboarding_id} has no customer row")
            data = personal_data_of(session, self._cipher, customer.id)
            if DOCUMENT not in application["missing"]:
                if (data.document_type, data.document_number) == (document_type, number):
                    return _application(application)  # sent again (a retry): on file
                raise DocumentOnFile(
                    f"application {onboarding_id} has its identity document already"
                )
            customer.pii = seal(
                self._cipher,
                dataclasses.replace(data, document_type=document_type, document_number=number),
            )
            session.add(customer)
            updated = (
                conn.execute(
                    update(onboarding_applications)
                    .where(onboarding_applications.c.id == onboarding_id)
                    .values(
                        missing=func.array_remove(onboarding_applications.c.missing, DOCUMENT),
                        updated_at=func.now(),
                        documents_unsignalled_since=func.now(),
                    )
                    .returning(*onboarding_applications.c)
                )
                .mappings()
                .one()
            )
            # The type only: the number is personal data.
            record_audit_event(
                session,
                actor=application["client_id"] or "onboarding",
                action="onboarding.document_added",
                subject=onboarding_id,
                details={"customer_id": customer.id, "document_type": document_type},
            )
            session.commit()
        return _application(updated)

    # -- the saga's activities ------------------------------------------------------------
    def personal_data(self, customer_id: str) -> PersonalData:
        with Session(self._engine) as session:
            return personal_data_of(session, self._cipher, customer_id)

    def set_user_id(self, customer_id: str, user_id: str) -> None:
        """Link the customer to their Keycloak user; the same link again changes nothing."""
        with Session(self._engine) as session:
            customer = session.get(CustomerRow, customer_id, with_for_update=True)
            if customer is None:
                raise LookupError(f"no customer {customer_id}")
            if customer.user_id == user_id:
                return
            if customer.user_id is not None:
                raise ValueError(f"customer {customer_id} is linked to another user")
            customer.user_id = user_id
            session.add(customer)
            session.commit()

    def record(self, record: OnboardingRecord) -> bool:
        """The saga's state, for the API to read; returns whether the row took it.

        A decided application is never moved: a record with another status than its
        terminal one is ignored. The same terminal status again is taken, because the saga
        fills in what came after the decision (the wallet opened on approval). Ids and codes
        already known are kept when a record leaves them out (None); ``missing`` is what the
        application lacks now, so it is replaced.
        """
        table = onboarding_applications
        c = table.c
        values: dict[str, Any] = {
            "status": record.status,
            "missing": list(record.missing),
            "updated_at": func.now(),
            # The saga's own record proves it started, whether or not the API got to stamp
            # it: an unstamped row would never have a document's signal re-sent by the sweep.
            "saga_started_at": func.coalesce(c.saga_started_at, func.now()),
        }
        for column in (
            "user_id",
            "risk_tier",
            "kyc_verification_id",
            "kyc_verdict",
            "review_id",
            "decision_reason",
            "wallet_account_id",
        ):
            value = getattr(record, column)
            if value is not None:
                values[column] = value
        if record.risk_reasons:
            values["risk_reasons"] = list(record.risk_reasons)
        screening = None
        if record.screening is not None:
            screening = dataclasses.asdict(record.screening)
            values["screening"] = screening
        if record.status in TERMINAL_ONBOARDING:
            values["completed_at"] = func.coalesce(c.completed_at, func.now())
            values["documents_unsignalled_since"] = None  # a decided workflow hears nothing
        with Session(self._engine) as session:
            conn = session.connection()
            moved = (
                conn.execute(
                    update(table)
                    .where(
                        c.id == record.onboarding_id,
                        or_(c.status.not_in(TERMINAL_ONBOARDING), c.status == record.status),
                    )
                    .values(**values)
                    .returning(c.customer_id)
                )
                .mappings()
                .one_or_none()
            )
            if moved is None:
                return False  # decided otherwise already (or unknown): nothing to record
            customer_status = CUSTOMER_STATUS.get(record.status)
            customer = session.get(CustomerRow, moved["customer_id"])
            if customer_status is not None and customer is not None:
                customer.status = customer_status
                session.add(customer)
            record_audit_event(
                session,
                actor=record.onboarding_id,
                action=f"onboarding.{record.status}",
                subject=record.onboarding_id,
                details={
                    "customer_id": moved["customer_id"],
                    "user_id": record.user_id,
                    "risk_tier": record.risk_tier,
                    "risk_reasons": list(record.risk_reasons),
                    "missing": list(record.missing),
                    "kyc_verification_id": record.kyc_verification_id,
                    "kyc_verdict": record.kyc_verdict,
                    "screening": screening,
                    "review_id": record.review_id,
                    "decision_reason": record.decision_reason,
                    "wallet_account_id": record.wallet_account_id,
                },
            )
            session.commit()
        return True

    def mark_password_email_sent(self, onboarding_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(onboarding_applications)
                .where(
                    onboarding_applications.c.id == onboarding_id,
                    onboarding_applications.c.password_email_sent_at.is_(None),
                )
                .values(password_email_sent_at=func.now(), updated_at=func.now())
            )

    def audit(self, *, actor: str, action: str, subject: str, **details: object) -> None:
        """An event with no database change of its own (a Keycloak call, a mail)."""
        write_audit_event(
            self._engine, actor=actor, action=action, subject=subject, details=dict(details)
        )


__all__ = [
    "ApplicationClosed",
    "DocumentOnFile",
    "IdempotencyKeyReused",
    "OnboardingStore",
    "StoredApplication",
    "UnknownApplication",
]
