"""Payments: the platform's record of each payment, its idempotency keys and its refunds.

Revision ID: 0004_payments
Revises: 0003_customers
Create Date: 2026-11-26

The saga itself lives in Temporal (``PaymentWorkflow``); these tables are what the API
lists and filters, what the risk score counts (velocity, daily sums, known beneficiaries)
and what makes a client's retry land on the same payment:

- ``payments``: one row per payment, written by the API when it accepts the request and
  updated by the saga's activities as it moves. Money is integer minor units.
- ``payment_requests``: ``(scope, idempotency_key) -> payment_id`` with a hash of the body;
  the scope is the caller, so two clients never share keys.
- ``payment_refunds``: every refund, reserved under a lock on the payment row so the sum of
  refunds that are not failed never exceeds what was captured.
"""

from alembic import op

revision = "0004_payments"
down_revision = "0003_customers"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE payments (
    id                     text PRIMARY KEY CHECK (id ~ '^pay_[0-9a-z]{26}$'),
    kind                   text NOT NULL CHECK (kind IN ('topup', 'transfer', 'payout')),
    status                 text NOT NULL CHECK (status IN ('processing', 'in_review',
                               'succeeded', 'declined', 'failed', 'canceled',
                               'partially_refunded', 'refunded')),
    customer_id            text NOT NULL,
    client_id              text,
    created_by             text NOT NULL,
    amount                 bigint NOT NULL CHECK (amount > 0 AND amount <= 1000000000000000),
    currency               char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    source_account_id      text,
    destination_account_id text,
    payment_method         text,
    payout_destination     text,
    decline_code           text,
    risk_band              text CHECK (risk_band IN ('approve', 'review', 'decline')),
    risk_score             double precision,
    risk_reasons           text[],
    model_version          text,
    review_id              text,
    gateway_reference      text,
    captured_amount        bigint NOT NULL DEFAULT 0 CHECK (captured_amount >= 0),
    refunded_amount        bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    timeline               jsonb NOT NULL DEFAULT '[]',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    completed_at           timestamptz,
    CONSTRAINT refunds_within_capture CHECK (refunded_amount <= captured_amount),
    CONSTRAINT kind_has_its_accounts CHECK (
        (kind = 'topup' AND destination_account_id IS NOT NULL AND payment_method IS NOT NULL)
        OR (kind = 'transfer' AND source_account_id IS NOT NULL
            AND destination_account_id IS NOT NULL)
        OR (kind = 'payout' AND source_account_id IS NOT NULL AND payout_destination IS NOT NULL))
);
CREATE INDEX payments_by_customer ON payments (customer_id, created_at DESC, id DESC);
CREATE INDEX payments_by_client ON payments (client_id, created_at DESC, id DESC);

CREATE TABLE payment_requests (
    scope           text NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    text NOT NULL,
    payment_id      text NOT NULL REFERENCES payments (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, idempotency_key)
);

CREATE TABLE payment_refunds (
    id              text PRIMARY KEY CHECK (id ~ '^rfd_[0-9a-z]{26}$'),
    payment_id      text NOT NULL REFERENCES payments (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    status          text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code    text,
    scope           text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    text NOT NULL,
    gateway_reference text,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (scope, idempotency_key)
);
CREATE INDEX payment_refunds_by_payment ON payment_refunds (payment_id, created_at);
"""

DOWNGRADE = """
DROP TABLE payment_refunds;
DROP TABLE payment_requests;
DROP TABLE payments;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
