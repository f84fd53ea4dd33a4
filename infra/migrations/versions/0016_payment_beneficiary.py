"""Payments: the customer a transfer pays, so that customer cannot decide its review.

Revision ID: 0016_payment_beneficiary
Revises: 0015_one_answer_per_transfer_id
Create Date: 2026-12-03

A compliance case refuses the customer it concerns as its officer (own case). For a
transfer that was only the payer: the owner of the destination wallet, who gains from an
approval, could approve it. The API knows that owner when it accepts the transfer (both
wallets are read to check them); the column keeps it for the saga, which names it on the
case. Payments accepted before have none (NULL), as do top-ups and payouts.
"""

from alembic import op

revision = "0016_payment_beneficiary"
down_revision = "0015_one_answer_per_transfer_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE payments ADD COLUMN beneficiary_id text")


def downgrade() -> None:
    op.execute("ALTER TABLE payments DROP COLUMN beneficiary_id")
