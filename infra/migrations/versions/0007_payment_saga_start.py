"""Payments: when each payment's saga was started, so an accepted payment is never stranded.

Revision ID: 0007_payment_saga_start
Revises: 0006_onboarding
Create Date: 2026-11-26

``POST /v1/payments`` answers once the payment row is committed; the API then starts the
``PaymentWorkflow`` and stamps ``saga_started_at``. A row still without the stamp a few
seconds later (the API stopped in between, or Temporal was unreachable) is started by the
API's sweep; the partial index keeps that query to the few rows it concerns. Rows from
before this revision were started with their request: they are stamped with their
creation time.
"""

from alembic import op

revision = "0007_payment_saga_start"
down_revision = "0006_onboarding"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE payments ADD COLUMN saga_started_at timestamptz;
UPDATE payments SET saga_started_at = created_at;
CREATE INDEX payments_saga_not_started ON payments (created_at) WHERE saga_started_at IS NULL;
"""

DOWNGRADE = """
DROP INDEX payments_saga_not_started;
ALTER TABLE payments DROP COLUMN saga_started_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
