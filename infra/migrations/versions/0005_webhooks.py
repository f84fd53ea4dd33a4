"""Webhooks: apps' endpoints, the platform's events, every delivery attempt, sent mails.

Revision ID: 0005_webhooks
Revises: 0004_payments
Create Date: 2026-11-26

- ``webhook_endpoints``: where an app (a Keycloak client) wants events, and which types.
  A deleted endpoint keeps its row (``deleted_at``) so the delivery trail still names it.
- ``events``: each platform event once, keyed by its id (the receivers' de-duplication
  key); inserting it again changes nothing.
- ``webhook_deliveries``: every attempt with the receiver's status code or the error, for
  operators and the audit trail; append-only, like ``audit_events``.
- ``event_emails``: which events' customer mail went out, so a retried activity does not
  send it twice.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_webhooks"
down_revision = "0004_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id ~ '^we_[0-9a-z]{26}$'", name="webhook_endpoint_id_format"),
        sa.CheckConstraint("url ~ '^https?://'", name="webhook_url_is_http"),
        sa.CheckConstraint("cardinality(event_types) > 0", name="webhook_has_event_types"),
        # A deleted endpoint never receives again.
        sa.CheckConstraint("deleted_at IS NULL OR NOT enabled", name="deleted_is_disabled"),
    )
    op.create_index(
        "ix_webhook_endpoints_client",
        "webhook_endpoints",
        ["client_id"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=True),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("id ~ '^evt_[0-9A-Za-z_-]{1,96}$'", name="event_id_format"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.String(100), sa.ForeignKey("events.id"), nullable=False),
        sa.Column(
            "endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id"), nullable=False
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("attempt >= 1", name="attempt_counts_from_one"),
    )
    op.create_index(
        "ix_webhook_deliveries_event_endpoint", "webhook_deliveries", ["event_id", "endpoint_id"]
    )
    op.execute(
        """
        CREATE FUNCTION refuse_delivery_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER webhook_deliveries_append_only
          BEFORE UPDATE OR DELETE ON webhook_deliveries
          FOR EACH ROW EXECUTE FUNCTION refuse_delivery_change();
        CREATE TRIGGER webhook_deliveries_no_truncate
          BEFORE TRUNCATE ON webhook_deliveries
          FOR EACH STATEMENT EXECUTE FUNCTION refuse_delivery_change();
        """
    )
    op.create_table(
        "event_emails",
        sa.Column("event_id", sa.String(100), sa.ForeignKey("events.id"), primary_key=True),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column(
            "sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("event_emails")
    op.drop_table("webhook_deliveries")
    op.execute("DROP FUNCTION refuse_delivery_change()")
    op.drop_table("events")
    op.drop_table("webhook_endpoints")
