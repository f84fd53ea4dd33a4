"""Ledger: holds whose time ran out are released, as ``<hold id>:expired`` voids.

Revision ID: 0014_release_expired_holds
Revises: 0013_events_by_app
Create Date: 2026-12-03

A pending transfer with ``timeout_seconds`` could no longer be posted once it expired, but
its amount stayed reserved until someone voided it: a wallet kept money it could not spend
for good. ``ledger_release_expired_holds`` (run every minute by the ``ledger-roll-up``
schedule) voids each expired, unresolved hold through ``ledger_submit``, so the void is an
ordinary transfer: same rules, same balance updates, resolved at most once. Its id
``<hold id>:expired`` makes a second run release nothing more, and a later void by the
hold's owner is told the hold was already resolved.

Finding them stays cheap as the table grows: resolution is another row, so no index can
leave resolved holds out, and every hold (payments and refunds all set a timeout) would
sooner or later lie behind ``now()``. A sweep therefore only looks at holds that expired
since the last sweep (``ledger_hold_expiry_sweep``), with a margin of ten minutes for a hold
committed after its own expiry time had passed (its transaction started earlier).
"""

from alembic import op

revision = "0014_release_expired_holds"
down_revision = "0013_events_by_app"
branch_labels = None
depends_on = None

# "\:" is a plain colon: op.execute would otherwise read ":expired" as a bind parameter.
UPGRADE = r"""
CREATE INDEX ledger_transfers_hold_expiry ON ledger_transfers (expires_at, id)
    WHERE kind = 'pending' AND expires_at IS NOT NULL;

-- One row: holds that expired before swept_until have been swept; the next sweep looks
-- again from ten minutes before it.
CREATE TABLE ledger_hold_expiry_sweep (
    one_row     boolean PRIMARY KEY DEFAULT true CHECK (one_row),
    swept_until timestamptz NOT NULL
);
INSERT INTO ledger_hold_expiry_sweep (swept_until) VALUES ('-infinity');

-- Void up to p_limit expired holds nobody resolved; returns how many this call released.
-- Each void holds its accounts' locks until the call commits, hence the bound.
CREATE FUNCTION ledger_release_expired_holds(p_limit int DEFAULT 500) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_from     timestamptz;
    v_holds    text[];
    v_last     timestamptz;
    v_hold     text;
    v_out      jsonb;
    v_released int := 0;
BEGIN
    -- One sweep at a time: a concurrent one waits here, then starts where this one ended,
    -- instead of racing it to the same void ids.
    SELECT swept_until INTO v_from FROM ledger_hold_expiry_sweep FOR UPDATE;
    SELECT array_agg(c.id ORDER BY c.expires_at, c.id), max(c.expires_at)
      INTO v_holds, v_last
      FROM (SELECT p.id, p.expires_at FROM ledger_transfers p
             WHERE p.kind = 'pending' AND p.expires_at IS NOT NULL
               AND p.expires_at > v_from - interval '10 minutes'
               AND p.expires_at <= now()
               AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id)
               -- a void the ledger refused once would be refused again: skip, not loop
               AND NOT EXISTS (SELECT 1 FROM ledger_rejections x
                                WHERE x.id = p.id || '\:expired')
             ORDER BY p.expires_at, p.id
             LIMIT p_limit) c;
    IF v_holds IS NOT NULL THEN
        -- The limited accounts of the whole batch, locked up front in account-id order as
        -- every other writer takes them; the voids below then never wait for one.
        PERFORM 1 FROM ledger_accounts a
         WHERE a.id IN (SELECT t.debit_account_id FROM ledger_transfers t
                         WHERE t.id = ANY (v_holds)
                        UNION
                        SELECT t.credit_account_id FROM ledger_transfers t
                         WHERE t.id = ANY (v_holds))
           AND (a.debits_must_not_exceed_credits OR a.credits_must_not_exceed_debits)
         ORDER BY a.id
           FOR NO KEY UPDATE;
        FOREACH v_hold IN ARRAY v_holds LOOP
            v_out := ledger_submit(jsonb_build_array(jsonb_build_object(
                'id', v_hold || '\:expired', 'kind', 'void_pending', 'pending_id', v_hold,
                'metadata', jsonb_build_object('reason', 'released on expiry'))));
            -- Not ok: its owner resolved it meanwhile (the unique index decided).
            IF (v_out->>'ok')::boolean AND NOT (v_out->>'replayed')::boolean THEN
                v_released := v_released + 1;
            END IF;
        END LOOP;
    END IF;
    -- A full batch may have left later holds behind: the next sweep starts at its last.
    UPDATE ledger_hold_expiry_sweep
       SET swept_until = greatest(swept_until, CASE WHEN coalesce(cardinality(v_holds), 0) < p_limit
                                                    THEN now() ELSE v_last END);
    RETURN v_released;
END $$;
"""

DOWNGRADE = """
DROP FUNCTION ledger_release_expired_holds(int);
DROP TABLE ledger_hold_expiry_sweep;
DROP INDEX ledger_transfers_hold_expiry;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
