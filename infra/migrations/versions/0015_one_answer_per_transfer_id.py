"""Ledger: one answer per transfer id, however many ask for it at once.

Revision ID: 0015_one_answer_per_transfer_id
Revises: 0014_release_expired_holds
Create Date: 2026-12-03

A refused request writes its refusal (``ledger_rejections``) after the attempt to apply it
was rolled back, and the rollback frees the id's place in ``ledger_transfers``. A second
request with the same id (a client's retry, an activity retried after a timeout) that
checked for the id before the refusal was committed could then apply it: if money had
reached the debited account in between, the id ended both refused and applied, the first
caller told "insufficient funds" while the money moved, and every later replay saying it
had moved.

Now ``ledger_submit`` and ``ledger_submit_group`` first take a transaction-level advisory
lock on each of their transfer ids (in one order, so two groups cannot wait on each
other), then look for the ids and apply. A second request for an id waits until the first
has committed its outcome, and then answers with it. The previous functions keep their
bodies under the names ``…_with_ids_locked``; the group's fallback and the expiry sweep
call ``ledger_submit`` by name, so they take the locks too (a lock the transaction holds
already is taken again at no wait).
"""

from alembic import op

revision = "0015_one_answer_per_transfer_id"
down_revision = "0014_release_expired_holds"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER FUNCTION ledger_submit(jsonb) RENAME TO ledger_submit_with_ids_locked;
ALTER FUNCTION ledger_submit_group(jsonb) RENAME TO ledger_submit_group_with_ids_locked;

-- Until the transaction ends: in the order of the ids' hashes, so that two requests never
-- hold one id each while waiting for the other's.
CREATE FUNCTION ledger_lock_transfer_ids(p_ids text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_key bigint;
BEGIN
    FOR v_key IN
        SELECT DISTINCT hashtextextended(id, 0) FROM unnest(p_ids) AS id
         WHERE id IS NOT NULL ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
END $$;

-- A malformed request (not an array) takes no lock: it is refused before anything is read.
CREATE FUNCTION ledger_submit(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_transfers) = 'array' THEN
        PERFORM ledger_lock_transfer_ids(
            ARRAY(SELECT t->>'id' FROM jsonb_array_elements(p_transfers) AS t));
    END IF;
    RETURN ledger_submit_with_ids_locked(p_transfers);
END $$;

CREATE FUNCTION ledger_submit_group(p_batches jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
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
"""

DOWNGRADE = r"""
DROP FUNCTION ledger_submit_group(jsonb);
DROP FUNCTION ledger_submit(jsonb);
DROP FUNCTION ledger_lock_transfer_ids(text[]);
ALTER FUNCTION ledger_submit_group_with_ids_locked(jsonb) RENAME TO ledger_submit_group;
ALTER FUNCTION ledger_submit_with_ids_locked(jsonb) RENAME TO ledger_submit;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
