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
- accounts are never deleted, and their currency, kind and limits never change;
- both accounts of every inserted transfer exist and hold its currency (a statement-level
  trigger over the inserted rows).

Hot accounts: an account without a balance limit (the platform's clearing account, which
every card payment touches) is never locked. Its movements are appended to
ledger_balance_deltas and folded into the account row later (ledger_roll_up), so
payments through it do not queue behind each other. Balances read = row + open deltas.

ledger_submit(jsonb) is the entry point for one request: a linked batch of transfers in, a
result document out, in one round trip. Rule violations are recorded in ledger_rejections
so a retry with the same ids returns the same failure (for a batch, the failing leg's).

Throughput: measured on a 2-core machine, the bound is the statements inside the function
(~40 us each), not the commit flush. ledger_apply nets a batch's movements per account in
memory and checks accounts and idempotency with one query each. ledger_submit_group takes
several independent requests that arrived together at one client: when each is a single
posted or pending transfer they are applied set-wise (one probe for seen ids, one
validation query, the group's limited accounts locked together in account-id order so
concurrent groups never deadlock, one INSERT, one statement for all balance movements).
Any surprise (a seen id, an invalid request, a broken limit) rolls that attempt back and
each request is answered on its own by ledger_submit, so outcomes stay exact. A limit is
then checked on the group's net movement per account: the outcome of a valid serial order
of the concurrent requests.
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

CREATE FUNCTION ledger_transfers_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_transfers is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE FUNCTION ledger_transfers_check_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_problem text;
BEGIN
    SELECT CASE WHEN d.id IS NULL OR c.id IS NULL THEN 'account_not_found'
                ELSE 'currency_mismatch' END
      INTO v_problem
      FROM inserted n
      LEFT JOIN ledger_accounts d ON d.id = n.debit_account_id
      LEFT JOIN ledger_accounts c ON c.id = n.credit_account_id
     WHERE n.debit_account_id <> n.credit_account_id
       AND (d.id IS NULL OR c.id IS NULL OR d.currency <> n.currency OR c.currency <> n.currency)
     LIMIT 1;
    IF v_problem = 'account_not_found' THEN
        RAISE EXCEPTION 'account_not_found' USING ERRCODE = 'foreign_key_violation';
    ELSIF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'currency_mismatch' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Immutable rows; existence and currency of both accounts checked once per INSERT
-- statement over all inserted rows, whoever inserts.
CREATE TRIGGER ledger_transfers_no_change BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_refuse_change();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfers_refuse_change();
CREATE TRIGGER ledger_transfers_inserted AFTER INSERT ON ledger_transfers
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfers_check_inserted();

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
    j          int;
    s          int;
    t          jsonb;
    v_kind     text;
    v_debit    text;
    v_credit   text;
    v_amount   bigint;
    v_currency text;
    v_expires  timestamptz;
    v_held     bigint;
    v_pending  ledger_transfers%ROWTYPE;
    v_resolved text;
    v_batch    text := CASE WHEN n > 1 THEN p_transfers->0->>'id' END;
    v_accounts jsonb;
    v_account  jsonb;
    v_id       text;
    v_out      jsonb;
    v_dp       bigint;
    v_dpend    bigint;
    -- The plan: one element per transfer.
    k_id       text[] := '{}';
    k_kind     text[] := '{}';
    k_debit    text[] := '{}';
    k_credit   text[] := '{}';
    k_amount   bigint[] := '{}';
    k_currency text[] := '{}';
    k_pending  text[] := '{}';
    k_expires  timestamptz[] := '{}';
    k_hash     text[] := '{}';
    k_meta     jsonb[] := '{}';
    -- Net balance movement per account, kept sorted by account id (the lock order).
    e_id       text[] := '{}';
    e_dp       bigint[] := '{}';
    e_cp       bigint[] := '{}';
    e_dpend    bigint[] := '{}';
    e_cpend    bigint[] := '{}';
    -- Movements of unlimited accounts, appended as deltas.
    d_id       text[] := '{}';
    d_dp       bigint[] := '{}';
    d_cp       bigint[] := '{}';
    d_dpend    bigint[] := '{}';
    d_cpend    bigint[] := '{}';
BEGIN
    -- 1. Resolve every transfer to its accounts and amounts. Plain expressions only, but
    --    for holds, which are looked up.
    FOR i IN 0 .. n - 1 LOOP
        t := p_transfers->i;
        v_kind := t->>'kind';
        v_expires := NULL;
        v_held := 0;
        v_pending := NULL;
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
            IF FOUND OR v_pending.id = ANY (k_pending) THEN
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
        k_id := k_id || (t->>'id');
        k_kind := k_kind || v_kind;
        k_debit := k_debit || v_debit;
        k_credit := k_credit || v_credit;
        k_amount := k_amount || v_amount;
        k_currency := k_currency || v_currency;
        k_pending := k_pending || v_pending.id;
        k_expires := k_expires || v_expires;
        k_hash := k_hash || md5(t::text);
        k_meta := k_meta || coalesce(t->'metadata', '{}'::jsonb);

        -- Net movement per account: debit side then credit side.
        v_dp := CASE WHEN v_kind IN ('posted', 'post_pending') THEN v_amount ELSE 0 END;
        v_dpend := CASE WHEN v_kind = 'pending' THEN v_amount
                        WHEN v_kind IN ('post_pending', 'void_pending') THEN -v_held
                        ELSE 0 END;
        FOR s IN 1 .. 2 LOOP
            v_id := CASE WHEN s = 1 THEN v_debit ELSE v_credit END;
            j := array_position(e_id, v_id);
            IF j IS NULL THEN
                -- insert keeping e_id sorted
                j := 1;
                WHILE j <= coalesce(array_length(e_id, 1), 0) AND e_id[j] < v_id LOOP
                    j := j + 1;
                END LOOP;
                e_id := e_id[1:j - 1] || v_id || e_id[j:];
                e_dp := e_dp[1:j - 1] || 0::bigint || e_dp[j:];
                e_cp := e_cp[1:j - 1] || 0::bigint || e_cp[j:];
                e_dpend := e_dpend[1:j - 1] || 0::bigint || e_dpend[j:];
                e_cpend := e_cpend[1:j - 1] || 0::bigint || e_cpend[j:];
            END IF;
            IF s = 1 THEN
                e_dp[j] := e_dp[j] + v_dp;
                e_dpend[j] := e_dpend[j] + v_dpend;
            ELSE
                e_cp[j] := e_cp[j] + v_dp;
                e_cpend[j] := e_cpend[j] + v_dpend;
            END IF;
        END LOOP;
    END LOOP;

    -- 2. The accounts, in one query: they exist, share the currency, are open.
    SELECT jsonb_object_agg(a.id, jsonb_build_object(
               'currency', a.currency::text, 'closed', a.closed,
               'limited', a.debits_must_not_exceed_credits OR a.credits_must_not_exceed_debits))
      INTO v_accounts
      FROM ledger_accounts a WHERE a.id = ANY (e_id);
    v_accounts := coalesce(v_accounts, '{}'::jsonb);
    FOR i IN 1 .. n LOOP
        FOR s IN 1 .. 2 LOOP
            v_id := CASE WHEN s = 1 THEN k_debit[i] ELSE k_credit[i] END;
            v_account := v_accounts->v_id;
            IF v_account IS NULL THEN
                PERFORM ledger_reject('account_not_found', i - 1, format('no account %s', v_id));
            END IF;
            IF v_account->>'currency' <> k_currency[i] THEN
                PERFORM ledger_reject('currency_mismatch', i - 1,
                    format('account %s holds %s, the transfer is in %s',
                           v_id, v_account->>'currency', k_currency[i]));
            END IF;
            -- Holds may still be released on a closed account; nothing else moves it.
            IF (v_account->>'closed')::boolean AND k_kind[i] <> 'void_pending' THEN
                PERFORM ledger_reject('account_closed', i - 1,
                    format('account %s is closed', v_id));
            END IF;
        END LOOP;
    END LOOP;

    -- 3. Record the transfers first: a second resolution of the same hold waits here on
    --    the unique index and then fails, before it could touch any balance.
    WITH inserted AS (
        INSERT INTO ledger_transfers
            (id, kind, debit_account_id, credit_account_id, amount, currency, pending_id,
             expires_at, batch_id, request_hash, metadata)
        SELECT x.id, x.kind, x.debit, x.credit, x.amount, x.currency, x.pending, x.expires,
               v_batch, x.hash, x.meta
          FROM unnest(k_id, k_kind, k_debit, k_credit, k_amount, k_currency, k_pending,
                      k_expires, k_hash, k_meta)
               AS x(id, kind, debit, credit, amount, currency, pending, expires, hash, meta)
        RETURNING id, seq
    )
    SELECT jsonb_agg(jsonb_build_object('id', id, 'seq', seq) ORDER BY seq) INTO v_out
      FROM inserted;

    -- 4. Move the balances. A limited account is updated in place, one row at a time in
    --    account-id order (so concurrent batches queue instead of deadlocking), and its
    --    CHECK constraints refuse a broken limit. An unlimited account is never locked:
    --    its movement is appended as a delta.
    FOR j IN 1 .. coalesce(array_length(e_id, 1), 0) LOOP
        IF (v_accounts->e_id[j]->>'limited')::boolean THEN
            UPDATE ledger_accounts
               SET debits_posted = debits_posted + e_dp[j],
                   credits_posted = credits_posted + e_cp[j],
                   debits_pending = debits_pending + e_dpend[j],
                   credits_pending = credits_pending + e_cpend[j]
             WHERE id = e_id[j];
        ELSE
            d_id := d_id || e_id[j];
            d_dp := d_dp || e_dp[j];
            d_cp := d_cp || e_cp[j];
            d_dpend := d_dpend || e_dpend[j];
            d_cpend := d_cpend || e_cpend[j];
        END IF;
    END LOOP;
    IF array_length(d_id, 1) > 0 THEN
        INSERT INTO ledger_balance_deltas
            (account_id, debits_posted, credits_posted, debits_pending, credits_pending)
        SELECT * FROM unnest(d_id, d_dp, d_cp, d_dpend, d_cpend);
    END IF;
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

-- Group commit: several independent requests that arrived together at one client, applied
-- set-wise when each is a single posted or pending transfer (see the module docstring).
-- Every statement here is a key lookup or a keyed write. The plans PL/pgSQL caches per
-- connection are made early, when a young database's statistics still call the tables tiny
-- and the jsonb sets large (100 rows): measured, they then hash-join whole tables for as long
-- as the connection lives (3x slower). These settings keep every plan on the primary keys.
CREATE FUNCTION ledger_apply_group(p_batches jsonb) RETURNS jsonb LANGUAGE plpgsql
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    v_out      jsonb;
    -- Arrays, not joins against jsonb_array_elements: = ANY (array) keeps every lookup on
    -- the primary keys (the planner guesses 100 rows for a jsonb set and hash-joins whole
    -- tables).
    v_ids      text[] := ARRAY(SELECT b->0->>'id' FROM jsonb_array_elements(p_batches) b);
    v_accounts text[] := ARRAY(
        SELECT b->0->>'debit_account_id' FROM jsonb_array_elements(p_batches) b
        UNION
        SELECT b->0->>'credit_account_id' FROM jsonb_array_elements(p_batches) b);
    v_limited  text[];
BEGIN
    -- Only ids never seen before take the set-wise path (replays are answered one by one).
    PERFORM 1 FROM ledger_transfers WHERE id = ANY (v_ids)
    UNION ALL
    SELECT 1 FROM ledger_rejections WHERE id = ANY (v_ids)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'group fallback: a seen id' USING ERRCODE = 'BFC03';
    END IF;
    -- Every request valid: positive amount, two different open accounts in its currency.
    PERFORM 1 FROM jsonb_array_elements(p_batches) b
      LEFT JOIN ledger_accounts d ON d.id = b->0->>'debit_account_id'
      LEFT JOIN ledger_accounts c ON c.id = b->0->>'credit_account_id'
     WHERE d.id IS NULL OR c.id IS NULL OR d.id = c.id
        OR d.currency <> b->0->>'currency' OR c.currency <> b->0->>'currency'
        OR d.closed OR c.closed OR (b->0->>'amount')::bigint <= 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'group fallback: an invalid request' USING ERRCODE = 'BFC03';
    END IF;
    -- The group's limited accounts, locked together in account-id order.
    v_limited := ARRAY(
        SELECT id FROM ledger_accounts
         WHERE id = ANY (v_accounts)
           AND (debits_must_not_exceed_credits OR credits_must_not_exceed_debits)
         ORDER BY id
           FOR NO KEY UPDATE);
    WITH inserted AS (
        INSERT INTO ledger_transfers
            (id, kind, debit_account_id, credit_account_id, amount, currency, expires_at,
             request_hash, metadata)
        SELECT t->>'id', t->>'kind', t->>'debit_account_id', t->>'credit_account_id',
               (t->>'amount')::bigint, t->>'currency',
               CASE WHEN t->>'kind' = 'pending' AND t ? 'timeout_seconds'
                    THEN now() + make_interval(secs => (t->>'timeout_seconds')::int) END,
               md5(t::text), coalesce(t->'metadata', '{}'::jsonb)
          FROM jsonb_array_elements(p_batches) WITH ORDINALITY AS x(b, ord),
               LATERAL (SELECT x.b->0 AS t) one
         ORDER BY x.ord
        RETURNING id, seq
    )
    SELECT jsonb_object_agg(id, jsonb_build_object(
               'ok', true, 'replayed', false,
               'transfers', jsonb_build_array(jsonb_build_object('id', id, 'seq', seq))))
      INTO v_out FROM inserted;
    -- Net movement per account: limited accounts in place (their CHECKs hold the limits),
    -- the others as deltas.
    WITH moves AS (
        SELECT t->>'debit_account_id' AS account_id,
               CASE WHEN t->>'kind' = 'posted' THEN (t->>'amount')::bigint ELSE 0 END AS dp,
               0::bigint AS cp,
               CASE WHEN t->>'kind' = 'pending' THEN (t->>'amount')::bigint ELSE 0 END AS dpend,
               0::bigint AS cpend
          FROM jsonb_array_elements(p_batches) b, LATERAL (SELECT b->0 AS t) one
        UNION ALL
        SELECT t->>'credit_account_id', 0,
               CASE WHEN t->>'kind' = 'posted' THEN (t->>'amount')::bigint ELSE 0 END,
               0,
               CASE WHEN t->>'kind' = 'pending' THEN (t->>'amount')::bigint ELSE 0 END
          FROM jsonb_array_elements(p_batches) b, LATERAL (SELECT b->0 AS t) one
    ), net AS (
        SELECT account_id, sum(dp)::bigint AS dp, sum(cp)::bigint AS cp,
               sum(dpend)::bigint AS dpend, sum(cpend)::bigint AS cpend,
               account_id = ANY (v_limited) AS limited
          FROM moves GROUP BY account_id
    ), updated AS (
        -- (a data-modifying WITH runs exactly once, whether or not it is read)
        UPDATE ledger_accounts a
           SET debits_posted = a.debits_posted + net.dp,
               credits_posted = a.credits_posted + net.cp,
               debits_pending = a.debits_pending + net.dpend,
               credits_pending = a.credits_pending + net.cpend
          FROM net
         WHERE a.id = net.account_id AND net.limited AND a.id = ANY (v_limited)
        RETURNING a.id
    )
    INSERT INTO ledger_balance_deltas
        (account_id, debits_posted, credits_posted, debits_pending, credits_pending)
    SELECT account_id, dp, cp, dpend, cpend FROM net WHERE NOT limited;
    RETURN v_out;
END $$;

-- Several independent requests (each a JSON array of transfers: a linked batch) in, an
-- object of outcomes keyed by each request's first transfer id out. A request whose first
-- id appears twice in one group is answered once; the client does not send such groups.
CREATE FUNCTION ledger_submit_group(p_batches jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    n     int := jsonb_array_length(p_batches);
    i     int;
    v_out jsonb := '{}'::jsonb;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_batches) b
         WHERE jsonb_typeof(b) <> 'array' OR jsonb_array_length(b) <> 1
            OR b->0->>'kind' NOT IN ('posted', 'pending')
            OR b->0->>'debit_account_id' IS NULL OR b->0->>'credit_account_id' IS NULL
            OR b->0->>'amount' IS NULL OR b->0->>'currency' IS NULL OR b->0->>'id' IS NULL
    ) THEN
        BEGIN
            RETURN ledger_apply_group(p_batches);
        EXCEPTION
            -- Anything unusual: undo the attempt, answer each request on its own below.
            WHEN SQLSTATE 'BFC03' OR check_violation OR unique_violation
                 OR foreign_key_violation OR numeric_value_out_of_range
                 OR invalid_text_representation THEN
                NULL;
        END;
    END IF;
    FOR i IN 0 .. n - 1 LOOP
        v_out := v_out || jsonb_build_object(p_batches->i->0->>'id', ledger_submit(p_batches->i));
    END LOOP;
    RETURN v_out;
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
        DROP FUNCTION ledger_submit_group(jsonb);
        DROP FUNCTION ledger_apply_group(jsonb);
        DROP FUNCTION ledger_submit(jsonb);
        DROP FUNCTION ledger_apply(jsonb);
        DROP FUNCTION ledger_reject(text, int, text);
        DROP VIEW ledger_entries;
        DROP VIEW ledger_account_balances;
        DROP TABLE ledger_rejections;
        DROP TABLE ledger_balance_deltas;
        DROP TABLE ledger_transfers;
        DROP FUNCTION ledger_transfers_check_inserted();
        DROP FUNCTION ledger_transfers_refuse_change();
        DROP TABLE ledger_accounts;
        DROP FUNCTION ledger_account_guard();
        """
    )
