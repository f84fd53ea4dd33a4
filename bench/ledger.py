"""Ledger throughput and latency through ``LedgerStore``, next to a bare-INSERT baseline.

What it measures, in one run on the live database (transfers/s, p50/p99 latency):

- (a)  posted transfers between random pairs of funded customer wallets (liabilities with
       ``debits_must_not_exceed_credits``, so both rows are locked and updated);
- (b)  every transfer hitting one hot account: wallet -> the card clearing account, which has
       no balance limit, so it is never locked (its movements go to ledger_balance_deltas);
- (b') the same load, but the hot account HAS a limit (``credits_must_not_exceed_debits``):
       every transfer locks and updates that one row, which shows what deferral buys;
- (c)  linked batches of three legs (wallet -> wallet, wallet -> fee revenue, wallet -> tax),
       reported as legs/s and batches/s.

Every ledger call is ``LedgerStore.submit_outcome`` (one round trip to ``ledger_submit``), run
by ``--concurrency`` asyncio tasks sharing one pool of as many connections. Each scenario is
preceded by its BASELINE: as many one-statement transactions (an INSERT of a unique key into
the scratch table ``bench.baseline_<run>``, dropped at the end) as the scenario has database
transactions, on the same pool at the same concurrency. ``ratio`` is ledger rate / baseline.

After each scenario the invariants are checked: trial balance per currency, conservation
(balances == what the transfers add up to), no limited account of this run breaking its limit,
and every accepted transfer recorded. At the end this run's deferred balances are rolled up
(only this run's accounts: other people share the database) and everything is checked again.
The exit status is 1 if an invariant is broken, 0 otherwise; timings never decide it.

Every id carries a random per-run token, so runs can share the database with tests. Run:

    .venv/bin/python -m bench.ledger [--transfers N] [--concurrency C] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import errors, sql
from psycopg_pool import AsyncConnectionPool

from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.settings import Settings
from models.ledger import Account, AccountKind, NewAccount, TransferRequest

# One unit of work: a unique key in, a rejection code (or None when accepted) out.
Op = Callable[[str], Awaitable[str | None]]

FUNDING = 10**12  # minor units per wallet: far more than any run can spend
HOT_PREFUND = 10**15  # debits on the credit-limited clearing account, so credits fit
MAX_AMOUNT = 1_000
TARGETS = {"a": 5_000.0, "b": 3_000.0}  # transfers/s, reported, never enforced


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Measured:
    ops: int
    seconds: float
    latencies: list[float]
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    timed_out: bool = False

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def quantile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


async def drive(op: Op, count: int, concurrency: int, max_seconds: float, phase: str) -> Measured:
    """Run ``op`` ``count`` times from ``concurrency`` tasks, or until ``max_seconds`` pass."""
    started = time.perf_counter()
    stop_at = started + max_seconds
    result = Measured(ops=0, seconds=0.0, latencies=[])
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            if time.perf_counter() >= stop_at:
                result.timed_out = True
                return
            key = f"{phase}{issued}"
            issued += 1
            t0 = time.perf_counter()
            try:
                code = await op(key)
            except Exception as exc:  # an error is reported, not fatal to the run
                result.errors[type(exc).__name__] += 1
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.ops += 1
            if code is not None:
                result.rejected[code] += 1

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    result.seconds = time.perf_counter() - started
    return result


# -- the run's accounts and operations ---------------------------------------------------


@dataclass
class Run:
    token: str
    store: LedgerStore
    pool: AsyncConnectionPool
    rng: random.Random
    currency: str
    wallet_count: int
    baseline_table: sql.Composed
    wallets: list[str] = field(default_factory=list)
    accepted_legs: int = 0
    unknown_legs: int = 0  # legs whose call raised: committed or not, we cannot tell

    def acc(self, name: str) -> str:
        return f"acc_bench_{self.token}_{name}"

    def txf(self, name: str) -> str:
        return f"txf_bench_{self.token}_{name}"

    @property
    def prefix(self) -> str:
        return f"txf_bench_{self.token}_"

    @property
    def liquidity(self) -> str:  # funds the wallets; unlimited
        return self.acc("liquidity")

    @property
    def clearing(self) -> str:  # the hot card clearing account of (b); unlimited
        return self.acc("card_clearing")

    @property
    def clearing_limited(self) -> str:  # the hot account of (b'); credit-side limited
        return self.acc("card_clearing_limited")

    @property
    def fees(self) -> str:
        return self.acc("fee_revenue")

    @property
    def tax(self) -> str:
        return self.acc("tax_payable")

    @property
    def unlimited(self) -> list[str]:
        return [self.liquidity, self.clearing, self.fees, self.tax]

    @property
    def limited(self) -> list[str]:
        return [*self.wallets, self.clearing_limited]

    def leg(self, name: str, debit: str, credit: str, amount: int) -> TransferRequest:
        return TransferRequest(
            id=self.txf(name),
            debit_account_id=debit,
            credit_account_id=credit,
            amount=amount,
            currency=self.currency,
        )

    async def submit(self, legs: list[TransferRequest]) -> str | None:
        """One linked batch through the store; None if accepted, else the rejection code."""
        try:
            outcome = await self.store.submit_outcome(legs)
        except BaseException:
            self.unknown_legs += len(legs)
            raise
        if outcome.get("ok"):
            self.accepted_legs += len(legs)
            # A replay would mean an id was reused: impossible with the run token.
            return "replayed" if outcome.get("replayed") else None
        return str(outcome.get("code"))


async def set_up(run: Run, concurrency: int) -> None:
    platform = [
        (run.liquidity, AccountKind.ASSET, "liquidity", False),
        (run.clearing, AccountKind.ASSET, "card_clearing", False),
        (run.clearing_limited, AccountKind.ASSET, "card_clearing", True),
        (run.fees, AccountKind.REVENUE, "fees", False),
        (run.tax, AccountKind.LIABILITY, "tax_payable", False),
    ]
    for account_id, kind, code, limited in platform:
        await run.store.open_account(
            NewAccount(
                id=account_id,
                currency=run.currency,
                kind=kind,
                owner="platform",
                code=code,
                credits_must_not_exceed_debits=limited,
            )
        )
    run.wallets = [run.acc(f"w{i:05d}") for i in range(run.wallet_count)]

    async def open_wallet(key: str) -> str | None:
        i = int(key[1:])
        await run.store.open_account(
            NewAccount(
                id=run.wallets[i],
                currency=run.currency,
                kind=AccountKind.LIABILITY,
                owner=f"bench_{run.token}_c{i:05d}",
                code="customer_wallet",
                debits_must_not_exceed_credits=True,
            )
        )
        return None

    async def fund(key: str) -> str | None:
        i = int(key[1:])
        return await run.submit([run.leg(f"fund_{i}", run.liquidity, run.wallets[i], FUNDING)])

    for step, op in (("opening wallets", open_wallet), ("funding wallets", fund)):
        done = await drive(op, run.wallet_count, concurrency, 600.0, "s")
        if done.ops != run.wallet_count or done.rejected or done.errors:
            raise RuntimeError(f"set-up failed while {step}: {done}")
    prefund = run.leg("prefund_hot", run.clearing_limited, run.liquidity, HOT_PREFUND)
    if (code := await run.submit([prefund])) is not None:
        raise RuntimeError(f"set-up failed while prefunding the limited hot account: {code}")


def op_many_accounts(run: Run) -> Op:
    async def op(key: str) -> str | None:
        debit, credit = run.rng.sample(run.wallets, 2)
        amount = run.rng.randint(1, MAX_AMOUNT)
        return await run.submit([run.leg(f"a_{key}", debit, credit, amount)])

    return op


def op_hot_account(run: Run, hot: str, tag: str) -> Op:
    async def op(key: str) -> str | None:
        wallet = run.rng.choice(run.wallets)
        amount = run.rng.randint(1, MAX_AMOUNT)
        return await run.submit([run.leg(f"{tag}_{key}", wallet, hot, amount)])

    return op


def op_linked_batch(run: Run) -> Op:
    async def op(key: str) -> str | None:
        payer, payee = run.rng.sample(run.wallets, 2)
        amount = run.rng.randint(100, MAX_AMOUNT)
        fee = amount // 100 + 1
        tax = fee // 5 + 1
        return await run.submit(
            [
                run.leg(f"c_{key}_pay", payer, payee, amount),
                run.leg(f"c_{key}_fee", payer, run.fees, fee),
                run.leg(f"c_{key}_tax", payer, run.tax, tax),
            ]
        )

    return op


def op_baseline(run: Run, tag: str) -> Op:
    async def op(key: str) -> str | None:
        async with run.pool.connection() as conn:
            await conn.execute(run.baseline_table, (f"{tag}_{key}",))
        return None

    return op


# -- invariants --------------------------------------------------------------------------


async def check_invariants(run: Run) -> tuple[list[str], str]:
    """Problems found (empty if none) and a one-line summary of what was checked."""
    lines = await run.store.trial_balance()
    unbalanced = [
        f"trial balance {line.currency}: debits {line.debits_posted}/{line.debits_pending} "
        f"!= credits {line.credits_posted}/{line.credits_pending} (posted/pending)"
        for line in lines
        if not line.balanced
    ]
    off = await run.store.conservation_errors()
    conservation = []
    if off:
        ours = [a for a in off if a.startswith(run.acc(""))]
        conservation = [f"conservation: {len(off)} accounts off ({len(ours)} ours): {off[:5]}"]
    sem = asyncio.Semaphore(8)

    async def get(account_id: str) -> Account | None:
        async with sem:
            return await run.store.get_account(account_id)

    accounts = await asyncio.gather(*(get(a) for a in run.limited))
    limits = [
        f"limits: {account_id} "
        + ("missing" if account is None else f"available {account.balance.available} < 0")
        for account_id, account in zip(run.limited, accounts, strict=True)
        if account is None or account.balance.available < 0
    ]
    async with run.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM ledger_transfers WHERE starts_with(id, %s)", (run.prefix,)
        )
        row = await cur.fetchone()
    recorded = int(row[0]) if row else -1
    recording = []
    if not run.accepted_legs <= recorded <= run.accepted_legs + run.unknown_legs:
        recording = [
            f"transfers: {recorded} recorded, {run.accepted_legs} accepted "
            f"(+{run.unknown_legs} of unknown outcome)"
        ]
    summary = (
        ("trial balance BROKEN" if unbalanced else "trial balance 0 per currency")
        + f" ({len(lines)} currencies), conservation {'BROKEN' if off else 'ok'}, "
        f"limits {'BROKEN' if limits else 'ok'} ({len(run.limited)} limited accounts), "
        f"{recorded} transfers of this run recorded{' (MISMATCH)' if recording else ''}"
    )
    return unbalanced + conservation + limits + recording, summary


async def roll_up_ours(run: Run, everyone: bool) -> tuple[list[str], int]:
    """Fold the deferred movements; balances read before and after must be the same."""
    before = {a: await run.store.get_account(a) for a in run.unlimited}
    if everyone:
        folded = await run.store.roll_up()
    else:  # the same SQL function roll_up() calls, only for the accounts this run created
        folded = 0
        async with run.pool.connection() as conn:
            for account_id in run.unlimited:
                cur = await conn.execute("SELECT ledger_roll_up(%s)", (account_id,))
                row = await cur.fetchone()
                folded += int(row[0]) if row and row[0] is not None else 0
    problems: list[str] = []
    for account_id, old in before.items():
        new = await run.store.get_account(account_id)
        if old is None or new is None or old.balance != new.balance:
            problems.append(f"roll-up: {account_id} balance changed {old} -> {new}")
    async with run.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM ledger_balance_deltas WHERE account_id = ANY(%s)",
            (run.unlimited,),
        )
        row = await cur.fetchone()
    if row and row[0]:
        problems.append(f"roll-up: {row[0]} deltas of this run left after the roll-up")
    return problems, folded


# -- scenarios and report ----------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    transfers: int
    rejected: dict[str, int]
    errors: dict[str, int]
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    baseline_transactions: int
    baseline_rate: float
    baseline_p50_ms: float
    baseline_p99_ms: float
    ratio: float
    timed_out: bool


async def scenario(
    run: Run, args: argparse.Namespace, tag: str, label: str, op: Op, *, legs: int = 1
) -> list[Row]:
    count = max(1, args.transfers // legs)
    print(f"{label}: baseline {count} inserts, then {count * legs} transfers ...", flush=True)
    base_op = op_baseline(run, tag)
    await drive(base_op, args.warmup, args.concurrency, args.max_seconds, "w")
    base = await drive(base_op, count, args.concurrency, args.max_seconds, "m")
    await drive(op, args.warmup, args.concurrency, args.max_seconds, "w")
    got = await drive(op, count, args.concurrency, args.max_seconds, "m")

    def row(name: str, per_op: int) -> Row:
        rate = got.rate * per_op
        return Row(
            scenario=name,
            transfers=got.ops * per_op,
            rejected=dict(got.rejected),
            errors=dict(got.errors + base.errors),
            seconds=got.seconds,
            rate=rate,
            p50_ms=got.quantile_ms(0.50),
            p99_ms=got.quantile_ms(0.99),
            baseline_transactions=base.ops,
            baseline_rate=base.rate,
            baseline_p50_ms=base.quantile_ms(0.50),
            baseline_p99_ms=base.quantile_ms(0.99),
            ratio=rate / base.rate if base.rate else float("nan"),
            timed_out=got.timed_out or base.timed_out,
        )

    if legs == 1:
        return [row(label, 1)]
    return [row(f"{label}, legs", legs), row(f"{label}, batches", 1)]


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'scenario':<34} {'transfers':>9} {'rejected':>8} {'tx/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'baseline tx/s':>13} {'b p50':>6} {'b p99':>6} {'ratio':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        flag = " (time bound hit)" if r.timed_out else ""
        print(
            f"{r.scenario:<34} {r.transfers:>9} {sum(r.rejected.values()):>8} {r.rate:>8.0f} "
            f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.baseline_rate:>13.0f} "
            f"{r.baseline_p50_ms:>6.2f} {r.baseline_p99_ms:>6.2f} {r.ratio:>6.2f}{flag}"
        )
    for r in rows:
        if r.rejected:
            print(f"  {r.scenario}: rejected {dict(r.rejected)}")
        if r.errors:
            print(f"  {r.scenario}: ERRORS {dict(r.errors)}")


def targets_line(rows: list[Row]) -> str:
    parts = []
    for key, target in TARGETS.items():
        row = next(r for r in rows if r.scenario.startswith(f"({key})"))
        verdict = "met" if row.rate >= target else "NOT met"
        parts.append(f"({key}) >= {target:.0f}/s {verdict} ({row.rate:.0f}/s)")
    return "targets (informative only): " + ", ".join(parts)


async def create_baseline_table(run: Run, table_name: str) -> None:
    async with run.pool.connection() as conn:
        for attempt in range(3):
            try:
                await conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
                break
            except (errors.UniqueViolation, errors.DuplicateSchema):
                if attempt == 2:  # another run creating it at the same moment, thrice?
                    raise
        await conn.execute(
            sql.SQL("CREATE TABLE {} (id text PRIMARY KEY)").format(
                sql.Identifier("bench", table_name)
            )
        )


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    token = secrets.token_hex(4)
    settings = Settings()
    pool = create_ledger_pool(settings, min_size=args.concurrency, max_size=args.concurrency)
    await pool.open(wait=True)
    table_name = f"baseline_{token}"
    run = Run(
        token=token,
        store=LedgerStore(pool),
        pool=pool,
        rng=random.Random(args.seed),  # noqa: S311 - workload shape, not security
        currency=args.currency,
        wallet_count=args.wallets,
        baseline_table=sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(
            sql.Identifier("bench", table_name)
        ),
    )
    print(
        f"ledger bench run {token}: {settings.postgres_host}:{settings.postgres_port}/"
        f"{settings.postgres_db}, {args.transfers} transfers per scenario, concurrency "
        f"{args.concurrency}, {args.wallets} wallets, currency {args.currency}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows: list[Row] = []
    problems: list[str] = []
    summary = ""
    folded = 0
    try:
        await create_baseline_table(run, table_name)
        await set_up(run, args.concurrency)
        plan: list[tuple[str, str, Op, int]] = [
            ("a", "(a) many accounts", op_many_accounts(run), 1),
            ("b", "(b) hot account, no limit", op_hot_account(run, run.clearing, "b"), 1),
            ("b2", "(b') hot account, limited", op_hot_account(run, run.clearing_limited, "b2"), 1),
            ("c", "(c) 3-leg batches", op_linked_batch(run), 3),
        ]
        for tag, label, op, legs in plan:
            rows += await scenario(run, args, tag, label, op, legs=legs)
            found, summary = await check_invariants(run)
            problems += [f"after {label}: {p}" for p in found]
        found, folded = await roll_up_ours(run, args.global_roll_up)
        problems += found
        found, summary = await check_invariants(run)
        problems += [f"after roll-up: {p}" for p in found]
    finally:
        async with pool.connection() as conn:
            await conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("bench", table_name))
            )
        await run.store.close()
        await pool.close()
    elapsed = time.perf_counter() - started
    print_table(rows)
    print()
    print(targets_line(rows))
    scope = "every account" if args.global_roll_up else "this run's accounts"
    print(f"roll-up: {folded} deferred movements folded ({scope})")
    for p in problems:
        print(f"INVARIANT BROKEN: {p}")
    print(f"invariants: {summary}" + ("" if not problems else f"; {len(problems)} problems"))
    print(f"run time {elapsed:.1f} s")
    if args.json:
        document: dict[str, Any] = {
            "run": token,
            "at": datetime.now(UTC).isoformat(),
            "cpus": os.cpu_count(),
            "concurrency": args.concurrency,
            "transfers_per_scenario": args.transfers,
            "wallets": args.wallets,
            "scenarios": [
                {
                    k: None if isinstance(v, float) and math.isnan(v) else v
                    for k, v in asdict(r).items()
                }
                for r in rows
            ],
            "invariants_ok": not problems,
            "problems": problems,
            "run_seconds": round(elapsed, 1),
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transfers", type=int, default=10_000, help="per scenario")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks and connections")
    parser.add_argument("--wallets", type=int, default=1_000)
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured calls per phase")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="bound per phase")
    parser.add_argument("--currency", default="XTS", help="XTS: the ISO code for testing")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(
        "--global-roll-up",
        action="store_true",
        help="LedgerStore.roll_up() over every account (only on a database of your own)",
    )
    args = parser.parse_args(argv)
    if args.transfers < 3 or args.concurrency < 1 or args.wallets < 2:
        parser.error("need --transfers >= 3, --concurrency >= 1, --wallets >= 2")
    return args


def main() -> None:
    sys.exit(asyncio.run(main_async(parse_args())))


if __name__ == "__main__":
    main()
