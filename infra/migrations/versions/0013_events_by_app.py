"""Events: read back by their app, newest first.

Revision ID: 0013_events_by_app
Revises: 0012_onboarding_document_signal
Create Date: 2026-12-03

``GET /v1/events`` lists an app's own events newest first (``created_at``, then id) and
pages by the last one read. Without this index every page scanned the whole table.
"""

from alembic import op

revision = "0013_events_by_app"
down_revision = "0012_onboarding_document_signal"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX events_by_app ON events (client_id, created_at DESC, id DESC)
    WHERE client_id IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX events_by_app;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
