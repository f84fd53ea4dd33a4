"""Webhooks: an endpoint's secret can be rolled, the previous one signing on for a while.

Revision ID: 0011_webhook_secret_roll
Revises: 0010_onboarding_saga_start
Create Date: 2026-12-03

An app that leaked an endpoint's secret, or rotates secrets as a routine, had to register
the endpoint again and switch its receivers at the very moment the new one took over.
``POST /v1/webhook-endpoints/{id}/roll-secret`` makes a new secret; the one its receivers
verify with today (``previous_signing_secret``, an envelope like ``signing_secret``) keeps
signing next to it until ``previous_secret_expires_at``: each delivery carries one ``v1``
signature per secret, so receivers move over at their own pace. Both NULL: no rollover
under way. ``previous_secret_expires_at`` set with ``previous_signing_secret`` NULL: the
endpoint was signed with the platform's secret before its first own one.
"""

from alembic import op

revision = "0011_webhook_secret_roll"
down_revision = "0010_onboarding_saga_start"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_signing_secret text,
    ADD COLUMN previous_secret_expires_at timestamptz;
"""

DOWNGRADE = """
ALTER TABLE webhook_endpoints
    DROP COLUMN previous_signing_secret,
    DROP COLUMN previous_secret_expires_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
