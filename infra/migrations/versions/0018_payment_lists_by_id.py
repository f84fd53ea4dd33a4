"""Payments: the list indexes in the order the list reads.

Revision ID: 0018_payment_lists_by_id
Revises: 0017_settled_entries_horizon
Create Date: 2026-12-03

``GET /v1/payments`` reads a customer's or an app's payments newest first by id (ids sort
by creation time) and pages with ``id < cursor``. The indexes were on (owner, created_at,
id), which gives no id order after the owner: every page read all of the owner's rows and
sorted them, a cost that grows with an app's whole history. They are now (owner, id). The
risk score's history reads all of a customer's rows either way, by the same prefix.
"""

from alembic import op

revision = "0018_payment_lists_by_id"
down_revision = "0017_settled_entries_horizon"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX payments_by_customer")
    op.execute("DROP INDEX payments_by_client")
    op.execute("CREATE INDEX payments_by_customer ON payments (customer_id, id DESC)")
    op.execute("CREATE INDEX payments_by_client ON payments (client_id, id DESC)")


def downgrade() -> None:
    op.execute("DROP INDEX payments_by_customer")
    op.execute("DROP INDEX payments_by_client")
    op.execute(
        "CREATE INDEX payments_by_customer ON payments (customer_id, created_at DESC, id DESC)"
    )
    op.execute("CREATE INDEX payments_by_client ON payments (client_id, created_at DESC, id DESC)")
