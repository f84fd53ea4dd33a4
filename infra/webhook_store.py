"""Webhook endpoints, platform events, delivery attempts and sent customer mails.

The schema is owned by the migration ``0005_webhooks``; the tables below describe it for
SQLAlchemy Core. Endpoints are never removed: a deleted endpoint keeps its row (with
``deleted_at``) so every delivery attempt in the trail still names its URL.
Registering, deleting, disabling and enabling an endpoint is written to the audit log in
the same transaction. Events are written by ``infra.event_log`` (on the async pool, in the
payment's own transaction where there is one) and read back here for delivery.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.engine import RowMapping
from sqlmodel import Session

from infra.audit import record_audit_event
from infra.envelope import EnvelopeCipher
from infra.event_log import event_from_row
from infra.webhooks import storable_text
from models.ids import new_id
from models.notifications import DeliveryAttempt, PlatformEvent, WebhookEndpoint

# Kept apart from SQLModel.metadata: Alembic's environment compares that one with the
# database, and these tables are written by hand in the migration.
metadata = MetaData()

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("client_id", String(255), nullable=False),
    Column("url", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", String(64), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("signing_secret", Text, nullable=True),  # an envelope (0008)
    Column("previous_signing_secret", Text, nullable=True),  # an envelope (0011)
    Column("previous_secret_expires_at", DateTime(timezone=True), nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("type", String(60), nullable=False),
    Column("client_id", String(255), nullable=True),
    Column("customer_id", String(64), nullable=True),
    Column("data", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("event_id", String(100), ForeignKey("events.id"), nullable=False),
    Column("endpoint_id", String(40), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

event_emails = Table(
    "event_emails",
    metadata,
    Column("event_id", String(100), ForeignKey("events.id"), primary_key=True),
    Column("message_id", String(200), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# What the error column keeps of a failure: enough for an operator, bounded in size.
_MAX_ERROR = 500


def _endpoint(row: RowMapping) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        client_id=row["client_id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        enabled=row["enabled"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        deleted=row["deleted_at"] is not None,
        signing_secret=row["signing_secret"],
        previous_signing_secret=row["previous_signing_secret"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
    )


def _attempt(row: RowMapping) -> DeliveryAttempt:
    return DeliveryAttempt(
        event_id=row["event_id"],
        endpoint_id=row["endpoint_id"],
        attempt=row["attempt"],
        status_code=row["status_code"],
        error=row["error"],
        at=row["at"],
    )


# As many endpoints as Stripe gives an account: each event fans out to every one of them in
# one workflow, so an unbounded list would make one event thousands of requests.
MAX_ENDPOINTS_PER_CLIENT = 16


class EndpointLimitReached(Exception):
    """The app already has ``MAX_ENDPOINTS_PER_CLIENT`` endpoints."""


class WebhookStore:
    def __init__(self, engine: Engine, cipher: EnvelopeCipher) -> None:
        self._engine = engine
        self._cipher = cipher

    # -- endpoints (the API) ----------------------------------------------------------------
    def add_endpoint(
        self,
        *,
        client_id: str,
        url: str,
        event_types: list[str],
        created_by: str,
        signing_secret: str,
    ) -> WebhookEndpoint:
        """Register an endpoint; ``signing_secret`` is kept only as an envelope."""
        endpoint_id = new_id("we")
        sealed = self._cipher.encrypt(signing_secret.encode()).decode()
        with Session(self._engine) as session:
            # One registration of an app at a time, so two at once cannot both pass the count.
            session.connection().execute(
                select(
                    func.pg_advisory_xact_lock(func.hashtextextended(f"webhooks:{client_id}", 0))
                )
            )
            registered = session.connection().scalar(
                select(func.count()).where(
                    webhook_endpoints.c.client_id == client_id,
                    webhook_endpoints.c.deleted_at.is_(None),
                )
            )
            if (registered or 0) >= MAX_ENDPOINTS_PER_CLIENT:
                raise EndpointLimitReached(f"{registered} endpoints are registered already")
            row = (
                session.connection()
                .execute(
                    webhook_endpoints.insert()
                    .values(
                        id=endpoint_id,
                        client_id=client_id,
                        url=url,
                        event_types=event_types,
                        enabled=True,
                        created_by=created_by,
                        signing_secret=sealed,
                    )
                    .returning(*webhook_endpoints.c)
                )
                .mappings()
                .one()
            )
            # The URL is the app's own address, not personal data; secrets never appear.
            record_audit_event(
                session,
                actor=created_by,
                action="webhooks.endpoint_created",
                subject=endpoint_id,
                details={"client_id": client_id, "url": url, "event_types": event_types},
            )
            session.commit()
        return _endpoint(row)

    def list_endpoints(self, *, client_id: str) -> list[WebhookEndpoint]:
        statement = (
            select(webhook_endpoints)
            .where(
                webhook_endpoints.c.client_id == client_id,
                webhook_endpoints.c.deleted_at.is_(None),
            )
            .order_by(webhook_endpoints.c.id)
        )
        with self._engine.connect() as conn:
            return [_endpoint(row) for row in conn.execute(statement).mappings()]

    def delete_endpoint(self, *, client_id: str, endpoint_id: str, deleted_by: str) -> bool:
        """Delete the app's own endpoint; False when it has none by that id (another app's
        endpoint is exactly as absent as a missing one)."""
        with Session(self._engine) as session:
            result = session.connection().execute(
                update(webhook_endpoints)
                .where(
                    webhook_endpoints.c.id == endpoint_id,
                    webhook_endpoints.c.client_id == client_id,
                    webhook_endpoints.c.deleted_at.is_(None),
                )
                .values(enabled=False, deleted_at=func.now())
            )
            if result.rowcount == 0:
                return False
            record_audit_event(
                session,
                actor=deleted_by,
                action="webhooks.endpoint_deleted",
                subject=endpoint_id,
                details={"client_id": client_id},
            )
            session.commit()
        return True

    def enable_endpoint(
        self, *, client_id: str, endpoint_id: str, enabled_by: str
    ) -> WebhookEndpoint | None:
        """Enable the app's endpoint again (a receiver's 410 disabled it); None when it has
        none by that id. Enabling an enabled endpoint changes nothing and is not audited.
        Events from while it was disabled are not sent: it hears from the next one on."""
        c = webhook_endpoints.c
        mine = (c.id == endpoint_id, c.client_id == client_id, c.deleted_at.is_(None))
        with Session(self._engine) as session:
            conn = session.connection()
            changed = conn.execute(
                update(webhook_endpoints).where(*mine, ~c.enabled).values(enabled=True)
            )
            if changed.rowcount:
                record_audit_event(
                    session,
                    actor=enabled_by,
                    action="webhooks.endpoint_enabled",
                    subject=endpoint_id,
                    details={"client_id": client_id},
                )
            row = conn.execute(select(webhook_endpoints).where(*mine)).mappings().one_or_none()
            session.commit()
        return None if row is None else _endpoint(row)

    def roll_secret(
        self,
        *,
        client_id: str,
        endpoint_id: str,
        signing_secret: str,
        keep_previous_for: timedelta,
        rolled_by: str,
    ) -> WebhookEndpoint | None:
        """Give the app's endpoint a new secret; None when it has none by that id.

        The secret its receivers verify with now keeps signing next to the new one for
        ``keep_previous_for`` (zero: it stops at once). Rolled again while a rollover is
        under way, the secret from before the rollover stays, with its expiry, and only the
        new one is replaced: a roll sent twice (its answer lost) costs the receivers nothing.
        """
        c = webhook_endpoints.c
        sealed = self._cipher.encrypt(signing_secret.encode()).decode()
        under_way = c.previous_secret_expires_at > func.now()
        # The right-hand sides read the row as it was before this UPDATE.
        previous, expires = (
            (
                case((under_way, c.previous_signing_secret), else_=c.signing_secret),
                case(
                    (under_way, c.previous_secret_expires_at),
                    else_=func.now() + keep_previous_for,
                ),
            )
            if keep_previous_for > timedelta(0)
            else (None, None)
        )
        with Session(self._engine) as session:
            row = (
                session.connection()
                .execute(
                    update(webhook_endpoints)
                    .where(c.id == endpoint_id, c.client_id == client_id, c.deleted_at.is_(None))
                    .values(
                        previous_signing_secret=previous,
                        previous_secret_expires_at=expires,
                        signing_secret=sealed,
                    )
                    .returning(*webhook_endpoints.c)
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                return None
            record_audit_event(
                session,
                actor=rolled_by,
                action="webhooks.secret_rolled",
                subject=endpoint_id,
                details={
                    "client_id": client_id,
                    "previous_secret_expires_at": (
                        None
                        if row["previous_secret_expires_at"] is None
                        else row["previous_secret_expires_at"].isoformat()
                    ),
                },
            )
            session.commit()
        return _endpoint(row)

    def signing_secret(self, endpoint: WebhookEndpoint) -> str | None:
        """The endpoint's own secret in the clear, or None when it has none (registered
        before endpoints had one)."""
        return self._open(endpoint.signing_secret)

    def signing_secrets(self, endpoint: WebhookEndpoint, now: datetime) -> list[str | None]:
        """What a delivery at ``now`` is signed with: the endpoint's secret, and its previous
        one while a rollover is under way (None: the platform's secret)."""
        found = [self._open(endpoint.signing_secret)]
        expires = endpoint.previous_secret_expires_at
        if expires is not None and now < expires:
            found.append(self._open(endpoint.previous_signing_secret))
        return found

    def _open(self, envelope: str | None) -> str | None:
        return None if envelope is None else self._cipher.decrypt(envelope.encode()).decode()

    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        statement = select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
        with self._engine.connect() as conn:
            row = conn.execute(statement).mappings().one_or_none()
        return None if row is None else _endpoint(row)

    def disable_endpoint(self, endpoint_id: str, *, reason: str) -> None:
        with Session(self._engine) as session:
            result = session.connection().execute(
                update(webhook_endpoints)
                .where(webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.enabled)
                .values(enabled=False)
            )
            if result.rowcount:
                record_audit_event(
                    session,
                    actor="webhooks",
                    action="webhooks.endpoint_disabled",
                    subject=endpoint_id,
                    details={"reason": reason},
                )
            session.commit()

    # -- events and deliveries (the activities) ---------------------------------------------
    def get_event(self, event_id: str) -> PlatformEvent | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).mappings()
            found = row.one_or_none()
        return None if found is None else event_from_row(found)

    def record_attempt(
        self,
        *,
        event_id: str,
        endpoint_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
    ) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                webhook_deliveries.insert().values(
                    event_id=event_id,
                    endpoint_id=endpoint_id,
                    attempt=attempt,
                    status_code=status_code,
                    # Any failure's text (an excerpt of the receiver's answer, an error
                    # message quoting it): one NUL in it would lose the whole row.
                    error=None if error is None else storable_text(error[:_MAX_ERROR]),
                )
            )

    def accepted_attempt(self, *, event_id: str, endpoint_id: str) -> DeliveryAttempt | None:
        """The attempt the receiver accepted, if one was (a retry after a lost result)."""
        statement = (
            select(webhook_deliveries)
            .where(
                webhook_deliveries.c.event_id == event_id,
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.status_code.between(200, 299),
            )
            .order_by(webhook_deliveries.c.id)
            .limit(1)
        )
        with self._engine.connect() as conn:
            row = conn.execute(statement).mappings().one_or_none()
        return None if row is None else _attempt(row)

    def list_attempts(self, event_id: str) -> list[DeliveryAttempt]:
        statement = (
            select(webhook_deliveries)
            .where(webhook_deliveries.c.event_id == event_id)
            .order_by(webhook_deliveries.c.id)
        )
        with self._engine.connect() as conn:
            return [_attempt(row) for row in conn.execute(statement).mappings()]

    # -- customer mails ------------------------------------------------------------------------
    def mail_sent(self, event_id: str) -> bool:
        statement = select(event_emails.c.event_id).where(event_emails.c.event_id == event_id)
        with self._engine.connect() as conn:
            return conn.execute(statement).first() is not None

    def mark_mail_sent(self, event_id: str, *, message_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(event_emails)
                .values(event_id=event_id, message_id=message_id)
                .on_conflict_do_nothing(index_elements=[event_emails.c.event_id])
            )
