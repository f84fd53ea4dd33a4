"""Customers: who they are (encrypted) and where they stand.

Revision ID: 0003_customers
Revises: 0002_ledger
Create Date: 2026-11-26

Personal data (names, date of birth, contact details, address, identity document) is kept
in one envelope-encrypted column, ``pii``: the database, its backups and anyone with SQL
access see ciphertext only. What the platform must query in the clear is not personal:
the customer id, the Keycloak user id, the status and the country.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_customers"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(64), unique=True, nullable=True),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("pii", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("id ~ '^cus_[0-9a-z]{26}$'", name="customer_id_format"),
        sa.CheckConstraint("country ~ '^[A-Z]{2}$'", name="country_iso_3166"),
        # Ciphertext only: an envelope is a JSON document naming its key (infra/envelope.py).
        # (the bytes of '{"v":1,', spelled in hex: SQLAlchemy would read ":1" as a parameter)
        sa.CheckConstraint(
            "substring(pii from 1 for 7) = decode('7b2276223a312c', 'hex')",
            name="pii_is_an_envelope",
        ),
    )


def downgrade() -> None:
    op.drop_table("customers")
