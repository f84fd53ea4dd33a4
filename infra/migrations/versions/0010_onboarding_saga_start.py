"""Onboarding: when each application's workflow was started, so none is left ``received``.

Revision ID: 0010_onboarding_saga_start
Revises: 0009_refund_saga_start
Create Date: 2026-12-03

``POST /v1/onboarding`` commits the application (and the applicant's encrypted personal
data), then starts its ``OnboardingWorkflow``. With Temporal unreachable the answer was a
503 asking the app to send the request again; an app that did not, or that applied again
under a new key, left an application ``received`` for good, with a customer row nobody
would ever decide. Now the committed application is answered 202, a started one is stamped
``saga_started_at`` and the API's sweep starts the unstamped ones still ``received``.
Applications that have moved on were started: they are stamped with their creation time.
"""

from alembic import op

revision = "0010_onboarding_saga_start"
down_revision = "0009_refund_saga_start"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE onboarding_applications ADD COLUMN saga_started_at timestamptz;
UPDATE onboarding_applications SET saga_started_at = created_at WHERE status <> 'received';
CREATE INDEX onboarding_saga_not_started ON onboarding_applications (created_at)
    WHERE saga_started_at IS NULL;
"""

DOWNGRADE = """
DROP INDEX onboarding_saga_not_started;
ALTER TABLE onboarding_applications DROP COLUMN saga_started_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
