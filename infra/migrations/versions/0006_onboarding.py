"""Onboarding: each application's state and the idempotency keys of the requests that made it.

Revision ID: 0006_onboarding
Revises: 0005_webhooks
Create Date: 2026-11-27

The saga lives in Temporal (``OnboardingWorkflow``); these tables are what the API reads
and what makes an app's retry land on the same application:

- ``onboarding_applications``: one row per application, written by the API with its
  customer row (personal data encrypted in ``customers.pii``) and moved by the saga's
  ``record_onboarding`` activity. Ids, codes, scores and times only: the screening summary
  names the listed entry, never the applicant. A decided application (approved, rejected,
  expired, canceled) keeps its status: a trigger refuses to move it.
- ``onboarding_requests``: ``(scope, idempotency_key) -> onboarding_id`` with a hash of the
  body; the scope is the calling app.
"""

from alembic import op

revision = "0006_onboarding"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE onboarding_applications (
    id                     text PRIMARY KEY CHECK (id ~ '^onb_[0-9a-z]{26}$'),
    customer_id            text NOT NULL UNIQUE REFERENCES customers (id),
    client_id              text,
    status                 text NOT NULL CHECK (status IN ('received', 'awaiting_documents',
                               'verifying', 'screening', 'in_review', 'approved', 'rejected',
                               'expired', 'canceled')),
    country                text NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    currency               text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    user_id                text,
    risk_tier              text CHECK (risk_tier IN ('low', 'medium', 'high')),
    risk_reasons           text[] NOT NULL DEFAULT '{}',
    missing                text[] NOT NULL DEFAULT '{}',
    kyc_verification_id    text,
    kyc_verdict            text CHECK (kyc_verdict IN ('clear', 'mismatch', 'forged',
                               'needs_manual_check')),
    screening              jsonb,
    review_id              text,
    decision_reason        text,
    wallet_account_id      text,
    -- When Keycloak was asked to mail the set-password link (a retried activation does
    -- not mail it again).
    password_email_sent_at timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    completed_at           timestamptz,
    CONSTRAINT completed_when_decided CHECK (
        (status IN ('approved', 'rejected', 'expired', 'canceled')) = (completed_at IS NOT NULL))
);
CREATE INDEX onboarding_by_client ON onboarding_applications (client_id, created_at DESC, id DESC);

-- A decided application stays decided, whatever a late or repeated write says.
CREATE FUNCTION refuse_reopening_application() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status IN ('approved', 'rejected', 'expired', 'canceled')
     AND NEW.status IS DISTINCT FROM OLD.status THEN
    RAISE EXCEPTION 'onboarding application % is % and cannot become %',
      OLD.id, OLD.status, NEW.status USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER onboarding_decided_stays_decided
  BEFORE UPDATE ON onboarding_applications
  FOR EACH ROW EXECUTE FUNCTION refuse_reopening_application();

CREATE TABLE onboarding_requests (
    scope           text NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    text NOT NULL,
    onboarding_id   text NOT NULL REFERENCES onboarding_applications (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, idempotency_key)
);
"""

DOWNGRADE = """
DROP TABLE onboarding_requests;
DROP TABLE onboarding_applications;
DROP FUNCTION refuse_reopening_application();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
