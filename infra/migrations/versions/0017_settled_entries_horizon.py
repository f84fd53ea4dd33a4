"""Ledger: an account's entries are paged only as far as no earlier entry can still appear.

Revision ID: 0017_settled_entries_horizon
Revises: 0016_payment_beneficiary
Create Date: 2026-12-03

An entry's ``seq`` is drawn when its transfer is inserted, and its transaction commits a
moment later; two transactions on one account can commit in the other order. A reader
paging ``GET /v1/accounts/{id}/entries`` by ``seq`` could be handed seq 11 while seq 10 was
still uncommitted, move its cursor past 10, and never see it: a statement missing a
movement, and the running balances of the rows after it wrong. Platform accounts (never
locked: their movements are appended as deltas) met it under any concurrency; wallets
met it on the single-request path, which draws seqs before it locks the balance rows.

Now every writer, in ``ledger_submit`` and ``ledger_submit_group`` before anything is
inserted, takes a *shared* transaction lock on each account it moves (named in the
request, or the accounts of the hold it posts or voids), in one order. Writers never wait
for each other on these. A reader first calls ``ledger_entries_horizon(account)``, its own
short transaction: an *exclusive* lock on the account waits until every writer then moving
it has committed or rolled back, and the sequence's last value read under it is the
horizon. Every seq at or below it that belongs to the account is settled (a writer after
the lock draws a higher one), so a page stops there and nothing can appear behind its
cursor later. Writers wait for a reader only for the moment it reads one number.
"""

from alembic import op

revision = "0017_settled_entries_horizon"
down_revision = "0016_payment_beneficiary"
branch_labels = None
depends_on = None

# Account locks take two keys, the first 1818584167 ('ledg'); the transfer-id locks of
# 0015 take one bigint key, which PostgreSQL keeps apart from two-key locks anyway.
UPGRADE = r"""
-- Shared: writers of one account never wait for each other here, only for a reader's
-- moment (ledger_entries_horizon). The accounts a request moves are those it names and
-- those of the holds it posts or voids (a resolution names only its hold; a hold, once
-- written, never changes). In key order, so no two transactions wait in a circle.
CREATE FUNCTION ledger_lock_accounts_moved(p_transfers jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_key int;
BEGIN
    FOR v_key IN
        SELECT hashtext(named.account)
          FROM jsonb_array_elements(p_transfers) AS t,
               LATERAL (VALUES (t->>'debit_account_id'), (t->>'credit_account_id'))
                       AS named(account)
         WHERE named.account IS NOT NULL
        UNION
        SELECT hashtext(held.account)
          FROM ledger_transfers h,
               LATERAL (VALUES (h.debit_account_id), (h.credit_account_id)) AS held(account)
         WHERE h.id IN (SELECT t->>'pending_id' FROM jsonb_array_elements(p_transfers) AS t
                         WHERE t ? 'pending_id')
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock_shared(1818584167, v_key);
    END LOOP;
END $$;

-- Called as a statement of its own (its lock ends with it): the seq up to which the
-- account's entries are settled.
CREATE FUNCTION ledger_entries_horizon(p_account text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1818584167, hashtext(p_account));
    RETURN coalesce(pg_sequence_last_value(
        pg_get_serial_sequence('ledger_transfers', 'seq')::regclass), 0);
END $$;

CREATE OR REPLACE FUNCTION ledger_submit(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_transfers) = 'array' THEN
        PERFORM ledger_lock_transfer_ids(
            ARRAY(SELECT t->>'id' FROM jsonb_array_elements(p_transfers) AS t));
        PERFORM ledger_lock_accounts_moved(p_transfers);
    END IF;
    RETURN ledger_submit_with_ids_locked(p_transfers);
END $$;

CREATE OR REPLACE FUNCTION ledger_submit_group(p_batches jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_all jsonb;
BEGIN
    IF jsonb_typeof(p_batches) = 'array' THEN
        v_all := coalesce((
            SELECT jsonb_agg(t)
              FROM jsonb_array_elements(p_batches) AS b,
                   jsonb_array_elements(CASE WHEN jsonb_typeof(b) = 'array' THEN b
                                             ELSE '[]'::jsonb END) AS t), '[]'::jsonb);
        PERFORM ledger_lock_transfer_ids(ARRAY(SELECT t->>'id' FROM jsonb_array_elements(v_all) AS t));
        PERFORM ledger_lock_accounts_moved(v_all);
    END IF;
    RETURN ledger_submit_group_with_ids_locked(p_batches);
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION ledger_submit(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_transfers) = 'array' THEN
        PERFORM ledger_lock_transfer_ids(
            ARRAY(SELECT t->>'id' FROM jsonb_array_elements(p_transfers) AS t));
    END IF;
    RETURN ledger_submit_with_ids_locked(p_transfers);
END $$;

CREATE OR REPLACE FUNCTION ledger_submit_group(p_batches jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_batches) = 'array' THEN
        PERFORM ledger_lock_transfer_ids(ARRAY(
            SELECT t->>'id'
              FROM jsonb_array_elements(p_batches) AS b,
                   jsonb_array_elements(CASE WHEN jsonb_typeof(b) = 'array' THEN b
                                             ELSE '[]'::jsonb END) AS t));
    END IF;
    RETURN ledger_submit_group_with_ids_locked(p_batches);
END $$;

DROP FUNCTION ledger_entries_horizon(text);
DROP FUNCTION ledger_lock_accounts_moved(jsonb);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
