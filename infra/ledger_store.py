"""The ledger's Python side: one round trip per batch of transfers, errors by name.

The rules themselves live in PostgreSQL (``infra/migrations/versions/0002_ledger.py``);
this module speaks to them. ``submit`` hands a linked batch to the group committer
(``infra.ledger_group_commit``: requests that arrive together share one round trip to
``ledger_submit_group``) and turns its answer into results or a named ``LedgerError``.
Deadlocks and a concurrent request with the same id are retried with jittered backoff, so
callers never see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from infra.audit import add_audit_event
from infra.ledger_group_commit import GroupCommitter, with_retries
from infra.postgres_pool import PostgresPool
from infra.settings import Settings
from models.errors import LEDGER_ERRORS, IdempotencyConflict, LedgerError
from models.ledger import (
    Account,
    AccountKind,
    Entry,
    NewAccount,
    Transfer,
    TransferKind,
    TransferRequest,
    TrialBalanceLine,
)


@dataclass(frozen=True)
class AuditNote:
    """Who asked for a ledger change and why, recorded with it atomically."""

    actor: str
    action: str
    details: dict[str, Any] = field(default_factory=dict)


def create_ledger_pool(
    settings: Settings,
    *,
    min_size: int = 2,
    max_size: int = 20,
    timeout: float = 5.0,
    outage_timeout: float | None = None,
) -> AsyncConnectionPool:
    """``timeout``: how long a caller waits for a connection before ``PoolTimeout``;
    ``outage_timeout``: once a connection came back broken, how long a caller's own try to
    reach the server may take before it hears ``PoolTimeout`` (``infra/postgres_pool.py``)."""
    s = settings
    conninfo = (
        f"host={s.postgres_host} port={s.postgres_port} dbname={s.postgres_db} "
        f"user={s.postgres_user} application_name=bfc-ledger"
    )
    return PostgresPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        outage_timeout=outage_timeout,
        open=False,
        kwargs={"autocommit": True},
    )


_ACCOUNT_COLUMNS = (
    "id, currency, kind, owner, code, debits_must_not_exceed_credits, "
    "credits_must_not_exceed_debits, closed, debits_posted, credits_posted, "
    "debits_pending, credits_pending, created_at"
)
_TRANSFER_COLUMNS = (
    "id, seq, kind, debit_account_id, credit_account_id, amount, currency, pending_id, "
    "expires_at, batch_id, metadata, created_at"
)


def _account(row: dict[str, Any]) -> Account:
    return Account(**{**row, "currency": row["currency"].strip(), "kind": AccountKind(row["kind"])})


def _transfer(row: dict[str, Any]) -> Transfer:
    return Transfer(
        **{**row, "currency": row["currency"].strip(), "kind": TransferKind(row["kind"])}
    )


def ledger_error(result: dict[str, Any]) -> LedgerError:
    cls = LEDGER_ERRORS.get(result["code"], LedgerError)
    return cls(result.get("detail"), index=result.get("index"))


class LedgerStore:
    def __init__(
        self, pool: AsyncConnectionPool, *, group_commit: GroupCommitter | None = None
    ) -> None:
        self._pool = pool
        self._group = group_commit or GroupCommitter(pool)

    async def close(self) -> None:
        """Stop the group-commit flushers; call before closing the pool."""
        await self._group.close()

    # -- accounts ---------------------------------------------------------------------
    async def open_account(self, account: NewAccount) -> Account:
        """Create the account; opening the same id again with the same fields returns it."""
        opened, _ = await self.open_or_get_account(account)
        return opened

    async def open_or_get_account(self, account: NewAccount) -> tuple[Account, bool]:
        """``open_account``, and whether this call opened it: of callers racing to open
        one id, exactly one is told True."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "INSERT INTO ledger_accounts (id, currency, kind, owner, code, "
                "debits_must_not_exceed_credits, credits_must_not_exceed_debits) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (
                    account.id,
                    account.currency,
                    str(account.kind),
                    account.owner,
                    account.code,
                    account.debits_must_not_exceed_credits,
                    account.credits_must_not_exceed_debits,
                ),
            )
            created = cur.rowcount == 1  # 0: ON CONFLICT, it was there already
            existing = await self._get_account(conn, account.id)
        if existing is None:  # accounts are never deleted; this would be a broken database
            raise RuntimeError(f"account {account.id} vanished after insert")
        same = (
            existing.currency,
            existing.kind,
            existing.owner,
            existing.code,
            existing.debits_must_not_exceed_credits,
            existing.credits_must_not_exceed_debits,
        ) == (
            account.currency,
            account.kind,
            account.owner,
            account.code,
            account.debits_must_not_exceed_credits,
            account.credits_must_not_exceed_debits,
        )
        if not same:
            raise IdempotencyConflict(f"account {account.id} exists with other fields")
        return existing, created

    async def get_account(self, account_id: str) -> Account | None:
        async with self._pool.connection() as conn:
            return await self._get_account(conn, account_id)

    async def _get_account(self, conn: AsyncConnection[Any], account_id: str) -> Account | None:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_account_balances WHERE id = %s",  # noqa: S608
            (account_id,),
        )
        row = await cur.fetchone()
        return None if row is None else _account(row)

    async def get_accounts(self, account_ids: Sequence[str]) -> dict[str, Account]:
        """The accounts that exist among ``account_ids``, by id, in one query."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_account_balances WHERE id = ANY(%s)",  # noqa: S608
                (list(account_ids),),
            )
            return {row["id"]: _account(row) for row in await cur.fetchall()}

    async def list_accounts(self, *, owner: str | None = None) -> list[Account]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            if owner is None:
                await cur.execute(
                    f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_account_balances ORDER BY id"  # noqa: S608
                )
            else:
                await cur.execute(
                    f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_account_balances "  # noqa: S608
                    "WHERE owner = %s ORDER BY id",
                    (owner,),
                )
            return [_account(row) for row in await cur.fetchall()]

    async def close_account(self, account_id: str) -> Account:
        """Close an account: nothing moves it afterwards but the release of its holds."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE ledger_accounts SET closed = true WHERE id = %s", (account_id,)
            )
            account = await self._get_account(conn, account_id)
        if account is None:
            raise LEDGER_ERRORS["account_not_found"](f"no account {account_id}")
        return account

    # -- transfers --------------------------------------------------------------------
    async def submit(self, transfers: Sequence[TransferRequest]) -> list[Transfer]:
        """Create a linked batch: all of the transfers, or none of them."""
        return await self.get_transfers(await self._submitted_ids(transfers))

    async def create_transfer(self, transfer: TransferRequest) -> Transfer:
        return (await self.submit([transfer]))[0]

    async def record_transfer(self, transfer: TransferRequest) -> str:
        """Create one transfer (or find it made before under its id) and answer its id.

        For callers that need only to know it is in the ledger, such as the payment saga's
        hold, post and void: no second round trip to read the row back."""
        return (await self._submitted_ids([transfer]))[0]

    async def _submitted_ids(self, transfers: Sequence[TransferRequest]) -> list[str]:
        """Submit a linked batch; the ids the ledger made (or had made) of it, or its
        refusal raised as the rule's error."""
        result = await self._call_submit(Jsonb([t.as_json() for t in transfers]))
        if not result["ok"]:
            raise ledger_error(result)
        return [str(t["id"]) for t in result["transfers"]]

    async def submit_outcome(
        self, transfers: Sequence[TransferRequest], *, audit: AuditNote | None = None
    ) -> dict[str, Any]:
        """The raw outcome document (``ok``, ``replayed``, ``code``…) for callers that
        report rather than raise, such as the API and the benchmark. With ``audit``, a
        first success is written to the audit log in the same transaction."""
        return await self._call_submit(Jsonb([t.as_json() for t in transfers]), audit)

    async def _call_submit(self, payload: Jsonb, audit: AuditNote | None = None) -> dict[str, Any]:
        if audit is None:
            return await self._group.submit(payload.obj)

        async def audited() -> dict[str, Any]:
            # The audit row commits with the transfers or not at all: its own transaction.
            async with self._pool.connection() as conn, conn.transaction():
                outcome = await self._submit_once(conn, payload)
                if outcome.get("ok") and not outcome.get("replayed"):
                    await self._audit(conn, audit, outcome)
                return outcome

        return await with_retries(audited)

    @staticmethod
    async def _submit_once(conn: AsyncConnection[Any], payload: Jsonb) -> dict[str, Any]:
        cur = await conn.execute("SELECT ledger_submit(%s)", (payload,))
        row = await cur.fetchone()
        outcome: dict[str, Any] = row[0] if row else {}
        return outcome

    @staticmethod
    async def _audit(conn: AsyncConnection[Any], audit: AuditNote, outcome: dict[str, Any]) -> None:
        ids = [t["id"] for t in outcome["transfers"]]
        await add_audit_event(
            conn, actor=audit.actor, action=audit.action, subject=ids[0],
            details={**audit.details, "transfer_ids": ids},
        )  # fmt: skip

    async def find_transfer(self, transfer_id: str) -> Transfer | None:
        """The transfer under this id, or None when there is none (yet)."""
        try:
            [transfer] = await self.get_transfers([transfer_id])
        except KeyError:
            return None
        return transfer

    async def get_transfers(self, ids: Sequence[str]) -> list[Transfer]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers "  # noqa: S608
                "WHERE id = ANY(%s) ORDER BY seq",
                (list(ids),),
            )
            by_id = {row["id"]: _transfer(row) for row in await cur.fetchall()}
        return [by_id[i] for i in ids]

    # -- history ----------------------------------------------------------------------
    async def entries(self, account_id: str, *, after_seq: int = 0, limit: int = 50) -> list[Entry]:
        """Posted entries of an account, oldest first, each with the balance after it; only
        those no earlier entry can still appear behind (migration 0017), so a caller paging
        by ``seq`` misses none."""
        async with self._pool.connection() as conn:
            account = await self._get_account(conn, account_id)
            if account is None:
                return []
            # Normal side grows the balance: credits for liabilities, equity and revenue.
            sign = "CASE WHEN side = 'credit' THEN amount ELSE -amount END"
            if not account.kind.credit_normal:
                sign = "CASE WHEN side = 'debit' THEN amount ELSE -amount END"
            # A statement (a transaction) of its own: its lock waits for the account's
            # writers in flight and ends before the page is read.
            horizon = await conn.execute("SELECT ledger_entries_horizon(%s)", (account_id,))
            row = await horizon.fetchone()
            settled = int(row[0]) if row else 0
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                SELECT seq, transfer_id, side, amount, created_at, running_balance FROM (
                    SELECT seq, transfer_id, side, amount, created_at,
                           sum({sign}) OVER (ORDER BY seq, side) AS running_balance
                    FROM ledger_entries WHERE account_id = %s AND seq <= %s
                ) e WHERE seq > %s ORDER BY seq LIMIT %s
                """,  # noqa: S608 - sign is one of two constant expressions
                (account_id, settled, after_seq, limit),
            )
            return [Entry(**{**row, "running_balance": int(row["running_balance"])})
                    for row in await cur.fetchall()]  # fmt: skip

    async def balance_as_of(self, account_id: str, at: datetime) -> int:
        """The posted balance, in the account's normal direction, at a moment in the past."""
        account = await self.get_account(account_id)
        if account is None:
            raise LEDGER_ERRORS["account_not_found"](f"no account {account_id}")
        normal = "credit" if account.kind.credit_normal else "debit"
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(CASE WHEN side = %s THEN amount ELSE -amount END), 0) "
                "FROM ledger_entries WHERE account_id = %s AND created_at <= %s",
                (normal, account_id, at),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- invariants -------------------------------------------------------------------
    async def trial_balance(self) -> list[TrialBalanceLine]:
        """Per currency, all debits and all credits: equal, or the ledger is broken."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                """
                -- numeric sums: each balance fits 64 bits, their total need not
                SELECT currency, sum(debits_posted) AS debits_posted,
                       sum(credits_posted) AS credits_posted,
                       sum(debits_pending) AS debits_pending,
                       sum(credits_pending) AS credits_pending
                FROM ledger_account_balances GROUP BY currency ORDER BY currency
                """
            )
            return [
                TrialBalanceLine(
                    currency=row["currency"].strip(),
                    debits_posted=int(row["debits_posted"]),
                    credits_posted=int(row["credits_posted"]),
                    debits_pending=int(row["debits_pending"]),
                    credits_pending=int(row["credits_pending"]),
                )
                for row in await cur.fetchall()
            ]

    async def conservation_errors(self) -> list[str]:
        """Accounts whose balances differ from what their transfers add up to (none, ever)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                WITH held AS (
                    SELECT t.id, -(SELECT p.amount FROM ledger_transfers p
                                   WHERE p.id = t.pending_id) AS released
                    FROM ledger_transfers t WHERE t.pending_id IS NOT NULL
                ), moves AS (
                    SELECT debit_account_id AS account_id,
                           CASE WHEN kind IN ('posted', 'post_pending') THEN amount
                                ELSE 0 END AS dp,
                           0::bigint AS cp,
                           CASE WHEN kind = 'pending' THEN amount
                                ELSE coalesce(h.released, 0) END AS dpend,
                           0::bigint AS cpend
                    FROM ledger_transfers t LEFT JOIN held h USING (id)
                    UNION ALL
                    SELECT credit_account_id, 0,
                           CASE WHEN kind IN ('posted', 'post_pending') THEN amount ELSE 0 END,
                           0,
                           CASE WHEN kind = 'pending' THEN amount
                                ELSE coalesce(h.released, 0) END
                    FROM ledger_transfers t LEFT JOIN held h USING (id)
                ), expected AS (
                    SELECT account_id, sum(dp) AS dp, sum(cp) AS cp, sum(dpend) AS dpend,
                           sum(cpend) AS cpend
                    FROM moves GROUP BY account_id
                )
                SELECT b.id FROM ledger_account_balances b
                LEFT JOIN expected e ON e.account_id = b.id
                WHERE (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending)
                      IS DISTINCT FROM (coalesce(e.dp, 0), coalesce(e.cp, 0),
                                        coalesce(e.dpend, 0), coalesce(e.cpend, 0))
                """
            )
            return [row[0] for row in await cur.fetchall()]

    async def roll_up(self) -> int:
        """Fold the deferred balance movements into their accounts; returns how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(ledger_roll_up(account_id)), 0) FROM "
                "(SELECT DISTINCT account_id FROM ledger_balance_deltas) d"
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def release_expired_holds(self, limit: int = 500) -> int:
        """Void up to ``limit`` holds that expired unresolved, each as ``<hold id>:expired``
        through ``ledger_submit``; returns how many this call released (none twice)."""

        async def sweep() -> int:
            async with self._pool.connection() as conn:
                cur = await conn.execute("SELECT ledger_release_expired_holds(%s)", (limit,))
                row = await cur.fetchone()
            return int(row[0]) if row else 0

        # A deadlock with a payment resolving a hold on the same wallet rolls the whole
        # batch back; the retry finds what is still unresolved.
        return await with_retries(sweep)
