"""Ledger: accounts, immutable transfers, deferred balances of unconstrained accounts.

Revision ID: 0002_ledger
Revises: 0001_audit_log
Create Date: 2026-11-26

The rules live in the database, so no client can break them:
- transfers are immutable (a trigger refuses UPDATE, DELETE, TRUNCATE);
- amounts are positive, the two accounts differ and share the transfer's currency
  (constraints and an insert trigger);
- a pending transfer is resolved (posted or voided) at most once (a unique index);
- balance limits are CHECK constraints on the account row, which every movement of a
  limited account updates under a row lock taken in account-id order;
- accounts are never deleted, and their currency, kind and limits never change.

Hot accounts: an account without a balance limit (the platform's clearing account, which
every card payment touches) is never locked. Its movements are appended to
ledger_balance_deltas and folded into the account row later (ledger_roll_up), so
payments through it do not queue behind each other. Balances read = row + open deltas.

ledger_submit(jsonb) is the one entry point: a linked batch of transfers in, a result
document out, in one round trip. Rule violations are recorded in ledger_rejections so a
retry with the same ids returns the same failure.
"""

from alembic import op

revision = "0002_ledger"
down_revision = "0001_audit_log"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE ledger_accounts (
    id                              text PRIMARY KEY CHECK (id ~ '^acc_[0-9a-z_]{1,60}$'),
    currency                        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    kind                            text NOT NULL
        CHECK (kind IN ('asset', 'liability', 'equity', 'revenue', 'expense')),
    owner                           text NOT NULL CHECK (length(owner) BETWEEN 1 AND 100),
    code                            text NOT NULL CHECK (length(code) BETWEEN 1 AND 60),
    debits_must_not_exceed_credits  boolean NOT NULL DEFAULT false,
    credits_must_not_exceed_debits  boolean NOT NULL DEFAULT false,
    closed                          boolean NOT NULL DEFAULT false,
    debits_posted                   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted                  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending                  bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending                 bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    created_at                      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT one_balance_limit CHECK (
        NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)),
    CONSTRAINT insufficient_funds CHECK (
        NOT debits_must_not_exceed_credits
        OR debits_posted + debits_pending <= credits_posted),
    CONSTRAINT credit_limit_exceeded CHECK (
        NOT credits_must_not_exceed_debits
        OR credits_posted + credits_pending <= debits_posted)
);
CREATE INDEX ledger_accounts_owner ON ledger_accounts (owner, id);

CREATE FUNCTION ledger_account_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'ledger accounts are never deleted (% refused)', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.id, NEW.currency, NEW.kind, NEW.owner, NEW.code,
        NEW.debits_must_not_exceed_credits, NEW.credits_must_not_exceed_debits)
       IS DISTINCT FROM
       (OLD.id, OLD.currency, OLD.kind, OLD.owner, OLD.code,
        OLD.debits_must_not_exceed_credits, OLD.credits_must_not_exceed_debits) THEN
        RAISE EXCEPTION 'an account''s identity, currency, kind and limits never change'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_accounts_guard BEFORE UPDATE OR DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_account_guard();
CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_account_guard();

-- No foreign keys to ledger_accounts on the two tables below, on purpose: a foreign-key
-- check takes a share lock on the account row, which would serialize every movement of
-- the hot clearing account. ledger_submit checks existence; accounts are never deleted.
CREATE TABLE ledger_transfers (
    id                text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    kind              text NOT NULL
        CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending')),
    debit_account_id  text NOT NULL,
    credit_account_id text NOT NULL,
    amount            bigint NOT NULL CHECK (amount > 0),
    currency          char(3) NOT NULL,
    pending_id        text,
    expires_at        timestamptz,
    batch_id          text,
    request_hash      text NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_must_be_different CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT resolves_a_pending CHECK (
        (kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL)),
    CONSTRAINT only_holds_expire CHECK (expires_at IS NULL OR kind = 'pending')
);
-- A hold is resolved at most once, whoever tries concurrently.
CREATE UNIQUE INDEX ledger_transfers_resolved_once ON ledger_transfers (pending_id)
    WHERE pending_id IS NOT NULL;
CREATE INDEX ledger_transfers_debits ON ledger_transfers (debit_account_id, seq);
CREATE INDEX ledger_transfers_credits ON ledger_transfers (credit_account_id, seq);

CREATE FUNCTION ledger_transfer_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    debit_currency text;
    credit_currency text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'ledger_transfers is append-only (% refused)', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT currency INTO debit_currency FROM ledger_accounts WHERE id = NEW.debit_account_id;
    SELECT currency INTO credit_currency FROM ledger_accounts WHERE id = NEW.credit_account_id;
    IF debit_currency IS NULL OR credit_currency IS NULL THEN
        RAISE EXCEPTION 'account_not_found' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF debit_currency <> NEW.currency OR credit_currency <> NEW.currency THEN
        RAISE EXCEPTION 'currency_mismatch' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_transfers_guard BEFORE INSERT OR UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfer_guard();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfer_guard();

CREATE TABLE ledger_balance_deltas (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL,
    debits_posted   bigint NOT NULL,
    credits_posted  bigint NOT NULL,
    debits_pending  bigint NOT NULL,
    credits_pending bigint NOT NULL
);
CREATE INDEX ledger_balance_deltas_account ON ledger_balance_deltas (account_id);

CREATE TABLE ledger_rejections (
    id           text PRIMARY KEY,
    request_hash text NOT NULL,
    batch_index  int,
    code         text NOT NULL,
    detail       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Balances as readers see them: the account row plus its deltas not yet rolled up.
CREATE VIEW ledger_account_balances AS
SELECT a.id, a.currency, a.kind, a.owner, a.code,
       a.debits_must_not_exceed_credits, a.credits_must_not_exceed_debits, a.closed,
       a.debits_posted + coalesce(d.debits_posted, 0)     AS debits_posted,
       a.credits_posted + coalesce(d.credits_posted, 0)   AS credits_posted,
       a.debits_pending + coalesce(d.debits_pending, 0)   AS debits_pending,
       a.credits_pending + coalesce(d.credits_pending, 0) AS credits_pending,
       a.created_at
FROM ledger_accounts a
LEFT JOIN LATERAL (
    SELECT sum(x.debits_posted)::bigint AS debits_posted,
           sum(x.credits_posted)::bigint AS credits_posted,
           sum(x.debits_pending)::bigint AS debits_pending,
           sum(x.credits_pending)::bigint AS credits_pending
    FROM ledger_balance_deltas x WHERE x.account_id = a.id
) d ON true;

-- Posted movements per account (holds do not move a posted balance until posted).
CREATE VIEW ledger_entries AS
SELECT seq, id AS transfer_id, debit_account_id AS account_id, 'debit' AS side, amount,
       currency, created_at
FROM ledger_transfers WHERE kind IN ('posted', 'post_pending')
UNION ALL
SELECT seq, id, credit_account_id, 'credit', amount, currency, created_at
FROM ledger_transfers WHERE kind IN ('posted', 'post_pending');

-- Move an account's balance: a limited account's row is updated (it is already locked,
-- and its CHECK constraints enforce the limit); any other account gets a delta row.
CREATE FUNCTION ledger_move(p_account text, p_limited boolean,
                            p_dp bigint, p_cp bigint, p_dpend bigint, p_cpend bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_limited THEN
        UPDATE ledger_accounts
           SET debits_posted = debits_posted + p_dp,
               credits_posted = credits_posted + p_cp,
               debits_pending = debits_pending + p_dpend,
               credits_pending = credits_pending + p_cpend
         WHERE id = p_account;
    ELSE
        INSERT INTO ledger_balance_deltas
            (account_id, debits_posted, credits_posted, debits_pending, credits_pending)
        VALUES (p_account, p_dp, p_cp, p_dpend, p_cpend);
    END IF;
END $$;

CREATE FUNCTION ledger_reject(p_code text, p_index int, p_detail text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- The message carries the stable code; the handler in ledger_submit reads it back.
    RAISE EXCEPTION USING MESSAGE = p_code, DETAIL = p_detail, HINT = p_index::text,
                          ERRCODE = 'BFC01';
END $$;

-- Apply a linked batch; raises on the first broken rule (the caller rolls back).
CREATE FUNCTION ledger_apply(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    n          int := jsonb_array_length(p_transfers);
    i          int;
    t          jsonb;
    v_kind     text;
    v_debit    text;
    v_credit   text;
    v_amount   bigint;
    v_currency text;
    v_expires  timestamptz;
    v_pending  ledger_transfers%ROWTYPE;
    v_resolved text;
    v_batch    text := CASE WHEN n > 1 THEN p_transfers->0->>'id' END;
    v_account  record;
    v_plan     jsonb := '[]'::jsonb;
    v_limited  text[] := '{}';
    v_ids      text[] := '{}';
    v_seq      bigint;
    v_out      jsonb := '[]'::jsonb;
    p          jsonb;
    v_is_debit_limited  boolean;
    v_is_credit_limited boolean;
    v_held     bigint;
BEGIN
    -- 1. Resolve every transfer to its accounts and amount, checking what needs no lock.
    FOR i IN 0 .. n - 1 LOOP
        t := p_transfers->i;
        v_kind := t->>'kind';
        v_expires := NULL;
        v_held := 0;
        IF v_kind IN ('posted', 'pending') THEN
            v_debit := t->>'debit_account_id';
            v_credit := t->>'credit_account_id';
            v_amount := (t->>'amount')::bigint;
            v_currency := t->>'currency';
            IF v_debit IS NULL OR v_credit IS NULL OR v_amount IS NULL OR v_currency IS NULL THEN
                PERFORM ledger_reject('invalid_transfer', i,
                    'debit_account_id, credit_account_id, amount and currency are required');
            END IF;
            IF v_kind = 'pending' AND t ? 'timeout_seconds' THEN
                v_expires := now() + make_interval(secs => (t->>'timeout_seconds')::int);
            END IF;
        ELSIF v_kind IN ('post_pending', 'void_pending') THEN
            SELECT * INTO v_pending FROM ledger_transfers
             WHERE id = t->>'pending_id' AND kind = 'pending';
            IF NOT FOUND THEN
                PERFORM ledger_reject('pending_transfer_not_found', i,
                    format('no pending transfer %s', t->>'pending_id'));
            END IF;
            SELECT kind INTO v_resolved FROM ledger_transfers WHERE pending_id = v_pending.id;
            IF FOUND THEN
                PERFORM ledger_reject('pending_transfer_already_resolved', i,
                    format('pending transfer %s was already %s', v_pending.id,
                           CASE v_resolved WHEN 'post_pending' THEN 'posted' ELSE 'voided' END));
            END IF;
            IF v_kind = 'post_pending' AND v_pending.expires_at IS NOT NULL
               AND v_pending.expires_at <= now() THEN
                PERFORM ledger_reject('pending_transfer_expired', i,
                    format('pending transfer %s expired at %s', v_pending.id, v_pending.expires_at));
            END IF;
            v_debit := v_pending.debit_account_id;
            v_credit := v_pending.credit_account_id;
            v_currency := v_pending.currency;
            v_held := v_pending.amount;
            v_amount := CASE WHEN v_kind = 'void_pending' THEN v_pending.amount
                             ELSE coalesce((t->>'amount')::bigint, v_pending.amount) END;
            IF v_amount > v_pending.amount THEN
                PERFORM ledger_reject('exceeds_pending_amount', i,
                    format('%s exceeds the held %s', v_amount, v_pending.amount));
            END IF;
            IF t ? 'currency' AND t->>'currency' <> v_currency THEN
                PERFORM ledger_reject('currency_mismatch', i,
                    format('the hold is in %s', v_currency));
            END IF;
        ELSE
            PERFORM ledger_reject('invalid_transfer', i, format('unknown kind %s', v_kind));
        END IF;
        IF v_amount <= 0 THEN
            PERFORM ledger_reject('amount_must_be_positive', i, 'amount must be positive');
        END IF;
        IF v_debit = v_credit THEN
            PERFORM ledger_reject('accounts_must_be_different', i,
                'debit and credit accounts are the same');
        END IF;
        FOR v_account IN
            SELECT a.id, a.currency, a.closed,
                   (a.debits_must_not_exceed_credits OR a.credits_must_not_exceed_debits) AS limited
              FROM ledger_accounts a WHERE a.id IN (v_debit, v_credit)
        LOOP
            IF v_account.currency <> v_currency THEN
                PERFORM ledger_reject('currency_mismatch', i,
                    format('account %s holds %s, the transfer is in %s',
                           v_account.id, v_account.currency, v_currency));
            END IF;
            -- Holds may still be released on a closed account; nothing else moves it.
            IF v_account.closed AND v_kind <> 'void_pending' THEN
                PERFORM ledger_reject('account_closed', i,
                    format('account %s is closed', v_account.id));
            END IF;
            IF v_account.limited THEN
                v_limited := v_limited || v_account.id::text;
            END IF;
            v_ids := v_ids || v_account.id::text;
        END LOOP;
        IF NOT (v_debit = ANY (v_ids)) THEN
            PERFORM ledger_reject('account_not_found', i, format('no account %s', v_debit));
        END IF;
        IF NOT (v_credit = ANY (v_ids)) THEN
            PERFORM ledger_reject('account_not_found', i, format('no account %s', v_credit));
        END IF;
        v_plan := v_plan || jsonb_build_object(
            'kind', v_kind, 'debit', v_debit, 'credit', v_credit, 'amount', v_amount,
            'held', v_held, 'currency', v_currency, 'expires_at', v_expires,
            'pending_id', CASE WHEN v_kind IN ('post_pending', 'void_pending')
                               THEN v_pending.id END);
    END LOOP;

    -- 2. Record the transfers first: a second resolution of the same hold waits here on
    --    the unique index and then fails, before it could touch any balance.
    FOR i IN 0 .. n - 1 LOOP
        t := p_transfers->i;
        p := v_plan->i;
        INSERT INTO ledger_transfers
            (id, kind, debit_account_id, credit_account_id, amount, currency, pending_id,
             expires_at, batch_id, request_hash, metadata)
        VALUES (t->>'id', p->>'kind', p->>'debit', p->>'credit', (p->>'amount')::bigint,
                p->>'currency', p->>'pending_id', (p->>'expires_at')::timestamptz, v_batch,
                md5(t::text), coalesce(t->'metadata', '{}'::jsonb))
        RETURNING seq INTO v_seq;
        v_out := v_out || jsonb_build_object('id', t->>'id', 'seq', v_seq);
    END LOOP;

    -- 3. Lock the limited accounts, always in id order, so concurrent batches touching the
    --    same accounts queue instead of deadlocking. Unlimited accounts are not locked.
    PERFORM 1 FROM ledger_accounts
      WHERE id = ANY (v_limited) ORDER BY id FOR NO KEY UPDATE;

    -- 4. Move the balances; CHECK constraints on the rows refuse a broken limit.
    FOR i IN 0 .. n - 1 LOOP
        p := v_plan->i;
        v_kind := p->>'kind';
        v_debit := p->>'debit';
        v_credit := p->>'credit';
        v_amount := (p->>'amount')::bigint;
        v_held := (p->>'held')::bigint;
        v_is_debit_limited := v_debit = ANY (v_limited);
        v_is_credit_limited := v_credit = ANY (v_limited);
        IF v_kind = 'posted' THEN
            PERFORM ledger_move(v_debit, v_is_debit_limited, v_amount, 0, 0, 0);
            PERFORM ledger_move(v_credit, v_is_credit_limited, 0, v_amount, 0, 0);
        ELSIF v_kind = 'pending' THEN
            PERFORM ledger_move(v_debit, v_is_debit_limited, 0, 0, v_amount, 0);
            PERFORM ledger_move(v_credit, v_is_credit_limited, 0, 0, 0, v_amount);
        ELSIF v_kind = 'post_pending' THEN
            PERFORM ledger_move(v_debit, v_is_debit_limited, v_amount, 0, -v_held, 0);
            PERFORM ledger_move(v_credit, v_is_credit_limited, 0, v_amount, 0, -v_held);
        ELSE
            PERFORM ledger_move(v_debit, v_is_debit_limited, 0, 0, -v_held, 0);
            PERFORM ledger_move(v_credit, v_is_credit_limited, 0, 0, 0, -v_held);
        END IF;
    END LOOP;
    RETURN v_out;
END $$;

-- The one entry point. Returns {"ok": true, "replayed": bool, "transfers": [{id, seq}]}
-- or {"ok": false, "code": ..., "index": ..., "detail": ..., "replayed": bool}.
CREATE FUNCTION ledger_submit(p_transfers jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
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
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN jsonb_build_object('ok', false, 'code', 'invalid_transfer', 'index', 0,
                                  'detail', 'no transfers given', 'replayed', false);
    END IF;
    -- Idempotency: an id seen before answers with its original outcome, if the request is
    -- the same; otherwise it is a conflict. Nothing is written on this path.
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

-- Fold an account's deltas into its row. DELETE ... RETURNING takes exactly the deltas
-- that are committed now; deltas of transfers still in flight stay for the next roll-up.
CREATE FUNCTION ledger_roll_up(p_account text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_count int;
BEGIN
    WITH moved AS (
        DELETE FROM ledger_balance_deltas WHERE account_id = p_account RETURNING *
    ), total AS (
        SELECT count(*)::int AS n, coalesce(sum(debits_posted), 0) AS dp,
               coalesce(sum(credits_posted), 0) AS cp, coalesce(sum(debits_pending), 0) AS dpend,
               coalesce(sum(credits_pending), 0) AS cpend
        FROM moved
    ), upd AS (
        UPDATE ledger_accounts a
           SET debits_posted = a.debits_posted + total.dp,
               credits_posted = a.credits_posted + total.cp,
               debits_pending = a.debits_pending + total.dpend,
               credits_pending = a.credits_pending + total.cpend
          FROM total WHERE a.id = p_account AND total.n > 0
        RETURNING 1
    )
    SELECT n INTO v_count FROM total;
    RETURN v_count;
END $$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION ledger_roll_up(text);
        DROP FUNCTION ledger_submit(jsonb);
        DROP FUNCTION ledger_apply(jsonb);
        DROP FUNCTION ledger_reject(text, int, text);
        DROP FUNCTION ledger_move(text, boolean, bigint, bigint, bigint, bigint);
        DROP VIEW ledger_entries;
        DROP VIEW ledger_account_balances;
        DROP TABLE ledger_rejections;
        DROP TABLE ledger_balance_deltas;
        DROP TABLE ledger_transfers;
        DROP FUNCTION ledger_transfer_guard();
        DROP TABLE ledger_accounts;
        DROP FUNCTION ledger_account_guard();
        """
    )
