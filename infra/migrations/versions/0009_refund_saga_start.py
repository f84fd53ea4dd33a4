"""Refunds: when each refund's saga was started, so a reserved refund is never stranded.

Revision ID: 0009_refund_saga_start
Revises: 0008_webhook_endpoint_secrets
Create Date: 2026-12-03

``POST /v1/payments/{id}/refunds`` commits the refund's reservation, then starts its
``RefundWorkflow``. If Temporal was unreachable, or the API stopped in between, the
reservation stayed ``pending`` with no workflow: the money was never given back and the
amount stayed reserved against the payment for good. Now a started refund is stamped
``saga_started_at`` and the API's sweep starts the unstamped ones, as it does for payments.
Finished refunds from before this revision are stamped with their creation time; pending
ones are left to the sweep, whose start finds a workflow that already exists and starts
nothing twice.
"""

from alembic import op

revision = "0009_refund_saga_start"
down_revision = "0008_webhook_endpoint_secrets"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payment_refunds ADD COLUMN saga_started_at timestamptz;
UPDATE payment_refunds SET saga_started_at = created_at WHERE status <> 'pending';
CREATE INDEX payment_refunds_saga_not_started ON payment_refunds (created_at)
    WHERE saga_started_at IS NULL;
"""

DOWNGRADE = """
DROP INDEX payment_refunds_saga_not_started;
ALTER TABLE payment_refunds DROP COLUMN saga_started_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
