"""Onboarding: a stored identity document the application's workflow has not been told of.

Revision ID: 0012_onboarding_document_signal
Revises: 0011_webhook_secret_roll
Create Date: 2026-12-03

``POST /v1/onboarding/{id}/documents`` commits the document (sealed into the applicant's
personal data), then signals the application's workflow. With Temporal unreachable the
answer was a 503: the document was stored, and the workflow waited on for its reminders and
expiry unless the app sent the document again. Now the stored document is answered 202 and
the row carries ``documents_unsignalled_since`` until the workflow has been told; the API's
sweep tells the workflows of the rows left with it.
"""

from alembic import op

revision = "0012_onboarding_document_signal"
down_revision = "0011_webhook_secret_roll"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE onboarding_applications ADD COLUMN documents_unsignalled_since timestamptz;
CREATE INDEX onboarding_documents_unsignalled
    ON onboarding_applications (documents_unsignalled_since)
    WHERE documents_unsignalled_since IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX onboarding_documents_unsignalled;
ALTER TABLE onboarding_applications DROP COLUMN documents_unsignalled_since;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
