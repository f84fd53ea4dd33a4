"""Webhooks: each endpoint is signed with a secret of its own.

Revision ID: 0008_webhook_endpoint_secrets
Revises: 0007_payment_saga_start
Create Date: 2026-11-27

With one platform-wide signing secret, every app that verified its webhooks held the key
to forge webhooks to every other app. ``signing_secret`` is the endpoint's own secret,
shown to its app once at registration and kept here only as an envelope
(``infra/envelope.py``: a Vault Transit data key, AES-256-GCM). Endpoints registered
before this revision have none and are still signed with the platform's secret until
their app registers them again.
"""

from alembic import op

revision = "0008_webhook_endpoint_secrets"
down_revision = "0007_payment_saga_start"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE webhook_endpoints ADD COLUMN signing_secret text")


def downgrade() -> None:
    op.execute("ALTER TABLE webhook_endpoints DROP COLUMN signing_secret")
