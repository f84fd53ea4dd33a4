"""Ledger: a replayed failed batch answers with its first answer.

Revision ID: 0005_ledger_replay_batch_failure
Revises: 0004_ledger_group_commit
Create Date: 2026-11-26

A linked batch refused because of its second leg recorded ``linked_transfer_failed`` for the
first leg and the real reason for the second. A retry of the same batch met the first leg's
record first and answered ``linked_transfer_failed``: not the original answer. The replay
now looks up the failing leg's record (found by the property-based tests).
"""

from alembic import op

revision = "0005_ledger_replay_batch_failure"
down_revision = "0004_ledger_group_commit"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION ledger_submit(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    n          int := jsonb_array_length(p_transfers);
    i          int;
    t          jsonb;
    v_hash     text;
    v_found    int := 0;
    v_existing record;
    v_out      jsonb := '[]'::jsonb;
    v_code     text;
    v_detail   text;
    v_hint     text;
    v_index    int;
    v_constraint text;
    v_tids     text[] := '{}';
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN jsonb_build_object('ok', false, 'code', 'invalid_transfer', 'index', 0,
                                  'detail', 'no transfers given', 'replayed', false);
    END IF;
    -- Idempotency: an id seen before answers with its original outcome, if the request is
    -- the same; otherwise it is a conflict. Nothing is written on this path. New ids (the
    -- common case) cost one index probe per table for the whole batch.
    FOR i IN 0 .. n - 1 LOOP
        v_tids := v_tids || (p_transfers->i->>'id');
    END LOOP;
    PERFORM 1 FROM ledger_transfers WHERE id = ANY (v_tids)
    UNION ALL
    SELECT 1 FROM ledger_rejections WHERE id = ANY (v_tids)
    LIMIT 1;
    IF FOUND THEN
        FOR i IN 0 .. n - 1 LOOP
            t := p_transfers->i;
            v_hash := md5(t::text);
            SELECT request_hash, seq INTO v_existing FROM ledger_transfers WHERE id = t->>'id';
            IF FOUND THEN
                IF v_existing.request_hash <> v_hash THEN
                    RETURN jsonb_build_object('ok', false, 'code', 'idempotency_conflict',
                        'index', i, 'replayed', false,
                        'detail', format('transfer id %s was used with other fields', t->>'id'));
                END IF;
                v_found := v_found + 1;
                v_out := v_out || jsonb_build_object('id', t->>'id', 'seq', v_existing.seq);
                CONTINUE;
            END IF;
            SELECT request_hash, code, detail, batch_index INTO v_existing
              FROM ledger_rejections WHERE id = t->>'id';
            IF FOUND THEN
                IF v_existing.request_hash <> v_hash THEN
                    RETURN jsonb_build_object('ok', false, 'code', 'idempotency_conflict',
                        'index', i, 'replayed', false,
                        'detail', format('transfer id %s was used with other fields', t->>'id'));
                END IF;
                -- A leg that failed only because another leg of its batch did answers, on a
                -- replay of that batch, with the failing leg's own outcome: the first answer.
                IF v_existing.code = 'linked_transfer_failed'
                   AND p_transfers->v_existing.batch_index IS NOT NULL THEN
                    SELECT r.code, r.detail INTO v_code, v_detail FROM ledger_rejections r
                     WHERE r.id = p_transfers->v_existing.batch_index->>'id';
                    IF FOUND THEN
                        RETURN jsonb_build_object('ok', false, 'code', v_code,
                            'index', v_existing.batch_index, 'detail', v_detail,
                            'replayed', true);
                    END IF;
                END IF;
                RETURN jsonb_build_object('ok', false, 'code', v_existing.code,
                    'index', v_existing.batch_index, 'detail', v_existing.detail, 'replayed', true);
            END IF;
        END LOOP;
    END IF;
    IF v_found = n THEN
        RETURN jsonb_build_object('ok', true, 'replayed', true, 'transfers', v_out);
    ELSIF v_found > 0 THEN
        RETURN jsonb_build_object('ok', false, 'code', 'idempotency_conflict', 'index', 0,
            'replayed', false, 'detail', 'some of these transfer ids were used in another batch');
    END IF;

    BEGIN
        v_out := ledger_apply(p_transfers);
        RETURN jsonb_build_object('ok', true, 'replayed', false, 'transfers', v_out);
    EXCEPTION
        WHEN SQLSTATE 'BFC01' THEN
            GET STACKED DIAGNOSTICS v_code = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL,
                                    v_hint = PG_EXCEPTION_HINT;
            v_index := v_hint::int;
        WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME,
                                    v_detail = PG_EXCEPTION_DETAIL;
            -- The failing row's first column is the account id.
            v_hint := substring(v_detail from 'Failing row contains \(([^,]+),');
            v_code := CASE v_constraint
                WHEN 'insufficient_funds' THEN 'insufficient_funds'
                WHEN 'credit_limit_exceeded' THEN 'credit_limit_exceeded'
                ELSE 'invalid_transfer' END;
            v_detail := CASE v_constraint
                WHEN 'insufficient_funds' THEN
                    format('account %s cannot cover the debit (available balance too low)', v_hint)
                WHEN 'credit_limit_exceeded' THEN
                    format('account %s cannot take the credit (it would exceed its debits)', v_hint)
                ELSE format('constraint %s refused the transfer', v_constraint) END;
            v_index := NULL;
        WHEN numeric_value_out_of_range THEN
            v_code := 'balance_overflow';
            v_detail := 'a balance would leave the 64-bit range';
            v_index := NULL;
        WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
            IF v_constraint = 'ledger_transfers_resolved_once' THEN
                v_code := 'pending_transfer_already_resolved';
                v_detail := 'the pending transfer was resolved concurrently';
                v_index := NULL;
            ELSE
                -- The same id is being created right now by another request: not a
                -- business outcome. The client retries and then sees that request's result.
                RAISE EXCEPTION 'concurrent duplicate transfer id' USING ERRCODE = 'BFC02';
            END IF;
    END;
    -- A single transfer's failure is its own; in a batch a broken limit names no leg.
    IF v_index IS NULL AND n = 1 THEN
        v_index := 0;
    END IF;
    -- Record the failure for every id of the batch, so a retry gets the same answer.
    FOR i IN 0 .. n - 1 LOOP
        t := p_transfers->i;
        INSERT INTO ledger_rejections (id, request_hash, batch_index, code, detail)
        VALUES (t->>'id', md5(t::text), v_index,
                CASE WHEN v_index IS NULL OR v_index = i THEN v_code
                     ELSE 'linked_transfer_failed' END,
                coalesce(v_detail, v_code))
        ON CONFLICT (id) DO NOTHING;
    END LOOP;
    RETURN jsonb_build_object('ok', false, 'code', v_code, 'index', v_index,
                              'detail', coalesce(v_detail, v_code), 'replayed', false);
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION ledger_submit(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    n          int := jsonb_array_length(p_transfers);
    i          int;
    t          jsonb;
    v_hash     text;
    v_found    int := 0;
    v_existing record;
    v_out      jsonb := '[]'::jsonb;
    v_code     text;
    v_detail   text;
    v_hint     text;
    v_index    int;
    v_constraint text;
    v_tids     text[] := '{}';
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN jsonb_build_object('ok', false, 'code', 'invalid_transfer', 'index', 0,
                                  'detail', 'no transfers given', 'replayed', false);
    END IF;
    -- Idempotency: an id seen before answers with its original outcome, if the request is
    -- the same; otherwise it is a conflict. Nothing is written on this path. New ids (the
    -- common case) cost one index probe per table for the whole batch.
    FOR i IN 0 .. n - 1 LOOP
        v_tids := v_tids || (p_transfers->i->>'id');
    END LOOP;
    PERFORM 1 FROM ledger_transfers WHERE id = ANY (v_tids)
    UNION ALL
    SELECT 1 FROM ledger_rejections WHERE id = ANY (v_tids)
    LIMIT 1;
    IF FOUND THEN
        FOR i IN 0 .. n - 1 LOOP
            t := p_transfers->i;
            v_hash := md5(t::text);
            SELECT request_hash, seq INTO v_existing FROM ledger_transfers WHERE id = t->>'id';
            IF FOUND THEN
                IF v_existing.request_hash <> v_hash THEN
                    RETURN jsonb_build_object('ok', false, 'code', 'idempotency_conflict',
                        'index', i, 'replayed', false,
                        'detail', format('transfer id %s was used with other fields', t->>'id'));
                END IF;
                v_found := v_found + 1;
                v_out := v_out || jsonb_build_object('id', t->>'id', 'seq', v_existing.seq);
                CONTINUE;
            END IF;
            SELECT request_hash, code, detail, batch_index INTO v_existing
              FROM ledger_rejections WHERE id = t->>'id';
            IF FOUND THEN
                IF v_existing.request_hash <> v_hash THEN
                    RETURN jsonb_build_object('ok', false, 'code', 'idempotency_conflict',
                        'index', i, 'replayed', false,
                        'detail', format('transfer id %s was used with other fields', t->>'id'));
                END IF;
                RETURN jsonb_build_object('ok', false, 'code', v_existing.code,
                    'index', v_existing.batch_index, 'detail', v_existing.detail, 'replayed', true);
            END IF;
        END LOOP;
    END IF;
    IF v_found = n THEN
        RETURN jsonb_build_object('ok', true, 'replayed', true, 'transfers', v_out);
    ELSIF v_found > 0 THEN
        RETURN jsonb_build_object('ok', false, 'code', 'idempotency_conflict', 'index', 0,
            'replayed', false, 'detail', 'some of these transfer ids were used in another batch');
    END IF;

    BEGIN
        v_out := ledger_apply(p_transfers);
        RETURN jsonb_build_object('ok', true, 'replayed', false, 'transfers', v_out);
    EXCEPTION
        WHEN SQLSTATE 'BFC01' THEN
            GET STACKED DIAGNOSTICS v_code = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL,
                                    v_hint = PG_EXCEPTION_HINT;
            v_index := v_hint::int;
        WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME,
                                    v_detail = PG_EXCEPTION_DETAIL;
            -- The failing row's first column is the account id.
            v_hint := substring(v_detail from 'Failing row contains \(([^,]+),');
            v_code := CASE v_constraint
                WHEN 'insufficient_funds' THEN 'insufficient_funds'
                WHEN 'credit_limit_exceeded' THEN 'credit_limit_exceeded'
                ELSE 'invalid_transfer' END;
            v_detail := CASE v_constraint
                WHEN 'insufficient_funds' THEN
                    format('account %s cannot cover the debit (available balance too low)', v_hint)
                WHEN 'credit_limit_exceeded' THEN
                    format('account %s cannot take the credit (it would exceed its debits)', v_hint)
                ELSE format('constraint %s refused the transfer', v_constraint) END;
            v_index := NULL;
        WHEN numeric_value_out_of_range THEN
            v_code := 'balance_overflow';
            v_detail := 'a balance would leave the 64-bit range';
            v_index := NULL;
        WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
            IF v_constraint = 'ledger_transfers_resolved_once' THEN
                v_code := 'pending_transfer_already_resolved';
                v_detail := 'the pending transfer was resolved concurrently';
                v_index := NULL;
            ELSE
                -- The same id is being created right now by another request: not a
                -- business outcome. The client retries and then sees that request's result.
                RAISE EXCEPTION 'concurrent duplicate transfer id' USING ERRCODE = 'BFC02';
            END IF;
    END;
    -- A single transfer's failure is its own; in a batch a broken limit names no leg.
    IF v_index IS NULL AND n = 1 THEN
        v_index := 0;
    END IF;
    -- Record the failure for every id of the batch, so a retry gets the same answer.
    FOR i IN 0 .. n - 1 LOOP
        t := p_transfers->i;
        INSERT INTO ledger_rejections (id, request_hash, batch_index, code, detail)
        VALUES (t->>'id', md5(t::text), v_index,
                CASE WHEN v_index IS NULL OR v_index = i THEN v_code
                     ELSE 'linked_transfer_failed' END,
                coalesce(v_detail, v_code))
        ON CONFLICT (id) DO NOTHING;
    END LOOP;
    RETURN jsonb_build_object('ok', false, 'code', v_code, 'index', v_index,
                              'detail', coalesce(v_detail, v_code), 'replayed', false);
END $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
