"""Payments through the real API at a fixed arrival rate, next to a bare Temporal workflow.

What one run does, against the running stack (``bfc up``):

1. Set-up through the API: a staff login (``admin``) opens this run's wallets and a liquidity
   account (``POST /v1/ledger/accounts``) and funds the wallets with manual transfers
   (``POST /v1/ledger/transfers``); an ``app`` login (``bfc-app``, client credentials, its
   secret read from Vault) makes the payments. Each token is fetched once and refreshed
   in the background before its five minutes run out, never per request.
2. Steps of open-loop arrivals: payment ``i`` is fired at ``t0 + i / rate`` whether or not
   earlier ones have finished, through one shared keep-alive ``httpx.AsyncClient``, each with
   its own ``Idempotency-Key``; a ``transfer`` of 1.00-99.99 EUR between two of this run's
   wallets. Default steps: 5/s (latency at low load), then 20, 30, 35, 40, 45, 50, 60, 70,
   80 /s, 20 s each (the bare workflow keeps up past 60/s here, and the ratio needs its
   ceiling); a side stops after two steps that did not keep up. Work in flight (POSTs open
   + payments accepted and not yet seen ended) is capped; an arrival over the cap is shed
   and counted, never queued. The only reads while a step runs: once a second, how many of
   its payments have ended (one indexed count).
3. After each step: wait up to ``--drain-seconds`` (60) for its payments to end; what has not
   ended by then is *lost*. Then read, with psycopg, each payment's status and
   start-to-terminal, ``payments.completed_at - created_at``. CPU per payment is the
   user+system CPU of the stack's temporal, postgres (with every child process), api and
   worker processes (pids from ``.stack/run/``, ``/proc/<pid>/stat`` read before and after
   the step, drain included), divided by the payments that ended; keycloak and vault are
   shown beside it. A process restarted meanwhile makes the step's CPU n/a.
4. The baseline, in the same run: ``bench.bare_workflow.BareWorkflow`` (five no-op local
   activities, nothing else started) on an in-process worker with the platform worker's
   ``worker_tuning()``, on a task queue of its own, started by this process at the same
   rates; start-to-terminal is ``start_workflow`` to ``handle.result()``. Its CPU is that
   of the temporal process and of this process (worker, client and load generator).
   Payment and bare steps never overlap: by default they alternate per rate.
5. A step *kept up* when nothing was shed, refused or lost and completions came at least
   at 95 % of the arrival rate (ended / (last end - first arrival)). The *sustained* rate is
   the highest step that kept up; a side stops ramping after ``--stop-after`` steps in a row
   that did not. Targets from the issue are printed as met / not met, never asserted.
6. Clean-up: a payment's notification child (EventDeliveryWorkflow), where one was started
   (webhook endpoints of the app, or a mail the inline step could not send), is terminated
   once its step is measured: left alone, its retries would spill into the next steps and
   stay after the run. The payers exist only in the ledger, so Keycloak knows no address
   for them and the inline mail step sends nothing: a real customer's mail (SMTP) is not
   in these figures. Bare workflows still open at the end are terminated too. Only ids
   derived from this run's own ids are touched (``--keep-notifications`` leaves the
   children alone). Then the trial balance, the conservation check and this run's wallets
   are checked; the exit status is 1 if an invariant is broken, 0 otherwise. Timings never
   decide it.

Why wallets of this run rather than alice's: the risk policy sends a customer's 11th to
30th payment within an hour to compliance review and declines the rest (``velocity``), so
thousands of payments from one customer would measure the decline path, leave review cases
open and block that customer for everyone else for an hour. Each payer here makes at most
ten payments.

    .venv/bin/python -m bench.payments [--seconds S] [--rates 20,30,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvloop
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.service import RPCError
from temporalio.worker import Worker

from bench.bare_workflow import STEPS, BareWorkflow, noop
from infra.keycloak import client_credentials_login, password_login
from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.stack.process import ProcessRecord
from infra.temporal import connect_temporal
from infra.vault import SecretStore, connect_vault
from models.ledger import Account
from models.notifications import event_id
from models.payment import TERMINAL_STATUSES
from workers.main import worker_tuning

TARGET_SUSTAINED = 35.0  # payments/s
TARGET_LOW_P50_MS = 100.0  # start-to-terminal at the low step
TARGET_ACK_P99_MS = 50.0
TARGET_RATIO = 0.85

PAYMENTS_PER_PAYER = 10  # velocity: more than ten earlier payments in the hour -> review
FUNDING = 100_000  # minor units per wallet: ten payments of at most 99.99
AMOUNTS = (100, 9_999)  # minor units, far below the 1,000.00 review threshold
TOKEN_REFRESH_SECONDS = 240.0  # Keycloak access tokens live 300 s
KEPT_UP = 0.95  # completions/s over arrivals/s
STACK_CPU = ("temporal", "postgres", "api", "worker")
# Also busy during payment steps (JWKS, the notification's customer lookups, Transit), on the
# same two cores, but not part of the payment path's sum.
OTHER_CPU = ("keycloak", "vault")
BARE_CPU = ("temporal", "bench")
HISTORY_SAMPLES = 20


def quantile_ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


# -- CPU of the stack's processes --------------------------------------------------------


@dataclass(frozen=True)
class ProcTimes:
    """CPU clock ticks of one recorded process and its children at one moment."""

    pid: int
    own: int  # utime + stime
    reaped: int  # cutime + cstime: children that exited and were waited for
    children: dict[int, int]  # live child pid -> utime + stime


def _proc_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, utime + stime, cutime + cstime) for every process we can read."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces: state ppid ... (stat(5)).
        f = text.rpartition(")")[2].split()
        stats[int(entry.name)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
    return stats


def cpu_snapshot(pids: dict[str, int | None]) -> dict[str, ProcTimes | None]:
    stats = _proc_stats()
    snapshot: dict[str, ProcTimes | None] = {}
    for name, pid in pids.items():
        if pid is None or pid not in stats:
            snapshot[name] = None
            continue
        _, own, reaped = stats[pid]
        children = {p: s[1] for p, s in stats.items() if s[0] == pid}
        snapshot[name] = ProcTimes(pid, own, reaped, children)
    return snapshot


def cpu_seconds(before: ProcTimes | None, after: ProcTimes | None) -> float | None:
    """CPU used between two snapshots; None if the process was not the same one."""
    if before is None or after is None or before.pid != after.pid:
        return None
    ticks = after.own - before.own + after.reaped - before.reaped
    for pid, used in after.children.items():
        ticks += used - before.children.get(pid, 0)  # a child born meanwhile: all of it
    for pid, used in before.children.items():
        if pid not in after.children:
            ticks -= used  # exited and reaped: its whole life is in ``reaped`` now
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_between(
    before: dict[str, ProcTimes | None], after: dict[str, ProcTimes | None]
) -> dict[str, float | None]:
    return {name: cpu_seconds(before[name], after.get(name)) for name in before}


# -- logins ------------------------------------------------------------------------------


class Token:
    """One bearer token, fetched once and refreshed by ``keep_fresh`` before it expires."""

    def __init__(self, name: str, fetch: Callable[[], str]) -> None:
        self.name = name
        self._fetch = fetch
        self._value = ""
        self._fetched_at = -math.inf
        self.fetches = 0

    async def refresh(self) -> None:
        self._value = await asyncio.to_thread(self._fetch)
        self._fetched_at = time.monotonic()
        self.fetches += 1

    @property
    def age(self) -> float:
        return time.monotonic() - self._fetched_at

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._value}"}


async def keep_fresh(tokens: Iterable[Token]) -> None:
    while True:
        await asyncio.sleep(5)
        for token in tokens:
            if token.age > TOKEN_REFRESH_SECONDS:
                await token.refresh()


# -- the run -----------------------------------------------------------------------------


@dataclass
class Step:
    side: str  # "payments" or "bare"
    rate: float
    seconds: float
    scheduled: int = 0
    fired: int = 0
    shed: int = 0
    accepted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ack: list[float] = field(default_factory=list)  # POST / start_workflow, seconds
    ids: list[str] = field(default_factory=list)
    fire_times: list[float] = field(default_factory=list)  # wall clock (the database's)
    latencies: list[float] = field(default_factory=list)  # start-to-terminal, seconds
    done_times: list[float] = field(default_factory=list)  # when each ended, wall clock
    statuses: Counter[str] = field(default_factory=Counter)
    max_lag: float = 0.0  # how late the generator fired, seconds
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    arrivals_ended_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    window: float = 0.0  # start to end of drain, seconds: the CPU window
    cpu: dict[str, float | None] = field(default_factory=dict)
    cpu_other: dict[str, float | None] = field(default_factory=dict)  # OTHER_CPU
    idle_cpu: float = 0.0  # the same processes' idle use over the window, seconds

    @property
    def label(self) -> str:
        return f"{self.rate:g}/s"

    @property
    def terminal(self) -> int:
        return len(self.latencies)

    @property
    def lost(self) -> int:
        return self.accepted - self.terminal

    @property
    def arrival_rate(self) -> float:
        if len(self.fire_times) < 2:
            return float("nan")
        return (len(self.fire_times) - 1) / (max(self.fire_times) - min(self.fire_times))

    @property
    def done_rate(self) -> float:
        """Completions per second from the first arrival to the last completion: close to
        the arrival rate only if work ended about as fast as it came (a backlog that is
        worked off after the step stretches the span)."""
        if not self.done_times or not self.fire_times:
            return float("nan")
        span = max(self.done_times) - min(self.fire_times)
        return len(self.done_times) / span if span > 0 else float("nan")

    @property
    def kept_up(self) -> bool:
        return (
            self.accepted > 0
            and self.accepted == self.scheduled
            and not self.shed
            and not self.errors
            and self.lost == 0
            and self.done_rate >= KEPT_UP * self.rate
        )

    @property
    def cpu_total(self) -> float | None:
        if not self.cpu or any(v is None for v in self.cpu.values()):
            return None
        return sum(v for v in self.cpu.values() if v is not None)

    def cpu_ms_per_op(self, net: bool = False) -> float:
        total = self.cpu_total
        if total is None or not self.terminal:
            return float("nan")
        return (total - (self.idle_cpu if net else 0.0)) / self.terminal * 1000


@dataclass
class Run:
    token: str
    args: argparse.Namespace
    stack: Stack
    http: httpx.AsyncClient
    temporal: Client
    pool: AsyncConnectionPool
    ledger: LedgerStore
    staff: Token
    app: Token
    rng: random.Random
    bare_queue: str
    liquidity: str = ""
    wallets: list[str] = field(default_factory=list)
    payments_made: int = 0
    posting: int = 0  # POSTs in flight
    bare_started: int = 0
    bare_open_ids: set[str] = field(default_factory=set)
    payment_ids: list[str] = field(default_factory=list)  # every one of this run, warm-up too
    cleaned: set[str] = field(default_factory=set)  # workflow ids asked to terminate
    terminated: int = 0
    idle_rates: dict[str, float] = field(default_factory=dict)  # CPU seconds per second

    def record(self, name: str) -> ProcessRecord | None:
        """The launcher's record of a live service. Read only: ``ProcessTable.get`` would
        delete a stale record, which could race with someone restarting that service."""
        try:
            text = (self.stack.table.run_dir / f"{name}.json").read_text()
            record = ProcessRecord(**json.loads(text))
        except (OSError, ValueError, TypeError):
            return None
        return record if record.is_alive() else None

    def pids(self, names: Iterable[str]) -> dict[str, int | None]:
        pids: dict[str, int | None] = {}
        for name in names:
            if name == "bench":
                pids[name] = os.getpid()
            else:
                record = self.record(name)
                pids[name] = record.pid if record else None
        return pids


# -- set-up ------------------------------------------------------------------------------


async def api_call(run: Run, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    response = await run.http.post(
        path, json=body, headers={**run.staff.header(), "Idempotency-Key": key}
    )
    if response.status_code not in {200, 201}:
        raise RuntimeError(f"set-up: POST {path} -> {response.status_code} {response.text}")
    result: dict[str, Any] = response.json()
    return result


async def set_up(run: Run, payers: int) -> None:
    """Open and fund this run's wallets through the API, then check the ledger has them."""
    t, currency = run.token, run.args.currency
    account = await api_call(
        run,
        "/v1/ledger/accounts",
        {"currency": currency, "kind": "asset", "owner": f"bench_{t}", "code": "bench_liquidity"},
        f"bench-{t}-liquidity",
    )
    run.liquidity = account["id"]
    gate = asyncio.Semaphore(8)

    async def open_wallet(i: int) -> str:
        async with gate:
            opened = await api_call(
                run,
                "/v1/ledger/accounts",
                {
                    "currency": currency,
                    "kind": "liability",
                    "owner": f"bench_{t}_c{i:05d}",
                    "code": "customer_wallet",
                    "debits_must_not_exceed_credits": True,
                },
                f"bench-{t}-wallet-{i}",
            )
        return str(opened["id"])

    run.wallets = list(await asyncio.gather(*(open_wallet(i) for i in range(payers))))

    async def fund(batch: int, wallets: list[str]) -> None:
        legs = [
            {
                "debit_account_id": run.liquidity,
                "credit_account_id": w,
                "amount": FUNDING,
                "currency": currency,
            }
            for w in wallets
        ]
        async with gate:
            await api_call(
                run,
                "/v1/ledger/transfers",
                {"transfers": legs, "reason": f"payments benchmark {t}: fund its wallets"},
                f"bench-{t}-fund-{batch}",
            )

    batches = [run.wallets[i : i + 16] for i in range(0, payers, 16)]
    await asyncio.gather(*(fund(b, ws) for b, ws in enumerate(batches)))
    short = [a for a in await wallet_accounts(run) if a is None or a.balance.available != FUNDING]
    if short:
        raise RuntimeError(f"set-up: {len(short)} wallets not funded: {short[:3]}")


async def wallet_accounts(run: Run) -> list[Account | None]:
    gate = asyncio.Semaphore(8)

    async def get(account_id: str) -> Account | None:
        async with gate:
            return await run.ledger.get_account(account_id)

    return list(await asyncio.gather(*(get(w) for w in run.wallets)))


# -- arrivals ----------------------------------------------------------------------------


async def open_loop(
    step: Step, fire: Callable[[int], Coroutine[Any, Any, None]], busy: Callable[[], bool]
) -> set[asyncio.Task[None]]:
    """Fire ``fire(i)`` at ``t0 + i / rate`` for ``seconds``; return the tasks still going."""
    loop = asyncio.get_running_loop()
    step.scheduled = round(step.rate * step.seconds)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time()
    for i in range(step.scheduled):
        delay = start + i / step.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            step.max_lag = max(step.max_lag, -delay)
        if busy():
            step.shed += 1
            continue
        step.fired += 1
        step.fire_times.append(time.time())
        task = asyncio.create_task(fire(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return tasks


async def count_ended(run: Run, ids: list[str]) -> int:
    if not ids:
        return 0
    async with run.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM payments WHERE id = ANY(%s) AND completed_at IS NOT NULL",
            (ids,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def post_payment(run: Run, step: Step) -> None:
    """One transfer between two of this run's wallets; each payer pays at most ten times."""
    k = run.payments_made
    run.payments_made += 1
    n = len(run.wallets)
    body = {
        "kind": "transfer",
        "source_account_id": run.wallets[k % n],
        "destination_account_id": run.wallets[(k + 1) % n],
        "amount": run.rng.randint(*AMOUNTS),
        "currency": run.args.currency,
    }
    headers = {**run.app.header(), "Idempotency-Key": f"bench-{run.token}-pay-{k}"}
    run.posting += 1
    started = time.perf_counter()
    try:
        response = await run.http.post("/v1/payments", json=body, headers=headers)
    except httpx.HTTPError as exc:
        step.errors[type(exc).__name__] += 1
        return
    finally:
        run.posting -= 1
    if response.status_code == 202:
        step.ack.append(time.perf_counter() - started)
        step.accepted += 1
        step.ids.append(response.json()["id"])
        run.payment_ids.append(step.ids[-1])
        return
    try:
        code = response.json().get("code", "")
    except ValueError:
        code = ""
    step.errors[f"{response.status_code} {code}".strip()] += 1


async def payment_step(run: Run, rate: float, seconds: float, *, warmup: bool = False) -> Step:
    step = Step("payments", rate, seconds)
    ended_seen = 0
    cap: int = run.args.max_in_flight

    def busy() -> bool:
        return run.posting + len(step.ids) - ended_seen >= cap

    async def watch() -> None:
        nonlocal ended_seen
        while True:
            await asyncio.sleep(1.0)
            ended_seen = await count_ended(run, list(step.ids))

    before = cpu_snapshot(run.pids(STACK_CPU + OTHER_CPU))
    started = time.perf_counter()
    step.started_at = datetime.now(UTC)
    watcher = asyncio.create_task(watch())
    try:
        posts = await open_loop(step, lambda _: post_payment(run, step), busy)
        if posts:
            await asyncio.wait(posts)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    step.arrivals_ended_at = datetime.now(UTC)
    deadline = time.monotonic() + run.args.drain_seconds
    while time.monotonic() < deadline and await count_ended(run, step.ids) < len(step.ids):
        await asyncio.sleep(0.5)
    step.window = time.perf_counter() - started
    used = cpu_between(before, cpu_snapshot(run.pids(STACK_CPU + OTHER_CPU)))
    step.cpu = {n: used[n] for n in STACK_CPU}
    step.cpu_other = {n: used[n] for n in OTHER_CPU}
    step.idle_cpu = sum(run.idle_rates.get(n, 0.0) for n in STACK_CPU) * step.window
    await read_payments(run, step)
    if not warmup:
        print(
            f"  payments {step.label}: {step.accepted} accepted, {step.shed} shed, "
            f"{sum(step.errors.values())} refused in {step.window:.1f} s",
            flush=True,
        )
    return step


async def bare_step(run: Run, rate: float, seconds: float, *, warmup: bool = False) -> Step:
    step = Step("bare", rate, seconds)
    in_flight = 0
    cap: int = run.args.max_in_flight

    async def fire(_: int) -> None:
        nonlocal in_flight
        workflow_id = f"bench-bare-{run.token}-{run.bare_started}"
        run.bare_started += 1
        in_flight += 1
        started = time.perf_counter()
        try:
            handle = await run.temporal.start_workflow(
                BareWorkflow.run, workflow_id, id=workflow_id, task_queue=run.bare_queue
            )
            step.ack.append(time.perf_counter() - started)
            step.accepted += 1
            step.ids.append(workflow_id)
            run.bare_open_ids.add(workflow_id)
            steps_done = await handle.result()
        except (RPCError, WorkflowFailureError) as exc:
            step.errors[type(exc).__name__] += 1
            return
        finally:
            in_flight -= 1
        run.bare_open_ids.discard(workflow_id)
        step.latencies.append(time.perf_counter() - started)
        step.done_times.append(time.time())
        step.statuses["completed" if steps_done == len(STEPS) else "wrong result"] += 1

    before = cpu_snapshot(run.pids(BARE_CPU))
    started = time.perf_counter()
    step.started_at = datetime.now(UTC)
    tasks = await open_loop(step, fire, lambda: in_flight >= cap)
    step.arrivals_ended_at = datetime.now(UTC)
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=run.args.drain_seconds)
        for task in late:  # lost: not ended within the bound; terminated at the end
            task.cancel()
        if late:
            await asyncio.wait(late)
    step.window = time.perf_counter() - started
    step.cpu = cpu_between(before, cpu_snapshot(run.pids(BARE_CPU)))
    step.idle_cpu = sum(run.idle_rates.get(n, 0.0) for n in BARE_CPU) * step.window
    if not warmup:
        print(
            f"  bare     {step.label}: {step.accepted} started, {step.terminal} ended, "
            f"{step.shed} shed in {step.window:.1f} s",
            flush=True,
        )
    return step


async def measure_idle(run: Run, seconds: float) -> None:
    """The stack's CPU use with no load from us: reported, and netted out per payment."""
    names = (*STACK_CPU, *OTHER_CPU, "bench")
    before = cpu_snapshot(run.pids(names))
    await asyncio.sleep(seconds)
    used = cpu_between(before, cpu_snapshot(run.pids(names)))
    run.idle_rates = {n: (v or 0.0) / seconds for n, v in used.items()}


# -- after the steps ---------------------------------------------------------------------


async def read_payments(run: Run, step: Step) -> None:
    """Statuses and start-to-terminal of a step's payments from the payments table, read
    once its drain is over (never while a step runs)."""
    async with run.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, status, created_at, completed_at FROM payments WHERE id = ANY(%s)",
            (step.ids,),
        )
        rows = {str(r[0]): (str(r[1]), r[2], r[3]) for r in await cur.fetchall()}
    bound = step.arrivals_ended_at + timedelta(seconds=run.args.drain_seconds)
    for payment_id in step.ids:
        status, created, completed = rows.get(payment_id, ("missing", None, None))
        step.statuses[status] += 1
        if created and completed and status in TERMINAL_STATUSES and completed <= bound:
            step.latencies.append((completed - created).total_seconds())
            step.done_times.append(completed.timestamp())


@dataclass
class TaskGaps:
    """One workflow's history reduced to where its time went, in ms."""

    total: float  # execution started -> execution closed
    dispatch: list[float]  # per workflow task: scheduled -> started
    work: list[float]  # per workflow task: started -> completed
    child_start: float | None  # start child initiated -> child started


def task_gaps(history: WorkflowHistory) -> TaskGaps | None:
    scheduled = started = initiated = first = last = None
    gaps = TaskGaps(0.0, [], [], None)

    def ms(a: datetime, b: datetime) -> float:
        return (b - a).total_seconds() * 1000

    for event in history.events:
        at = event.event_time.ToDatetime()
        first = first or at
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and scheduled:
            started = at
            gaps.dispatch.append(ms(scheduled, at))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and started:
            gaps.work.append(ms(started, at))
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            initiated = at
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED and initiated:
            gaps.child_start = ms(initiated, at)
        elif kind in {
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        }:
            last = at
    if first is None or last is None:
        return None
    gaps.total = ms(first, last)
    return gaps


async def sample_gaps(run: Run, step: Step) -> list[TaskGaps]:
    picked = step.ids[:: max(1, len(step.ids) // HISTORY_SAMPLES)][:HISTORY_SAMPLES]
    found: list[TaskGaps] = []
    for workflow_id in picked:
        try:
            history = await run.temporal.get_workflow_handle(workflow_id).fetch_history()
        except RPCError:
            continue
        if (gaps := task_gaps(history)) is not None:
            found.append(gaps)
    return found


def describe_gaps(side: str, step: Step, samples: list[TaskGaps]) -> str:
    if not samples:
        return f"  {side} at {step.label}: no closed histories to read"
    tasks = min(len(s.dispatch) for s in samples)
    parts = [f"whole run {statistics.median(s.total for s in samples):.1f}"]
    for i in range(tasks):
        dispatch = statistics.median(s.dispatch[i] for s in samples)
        work = statistics.median(s.work[i] for s in samples if len(s.work) > i)
        parts.append(
            f"task {i + 1}: scheduled->started {dispatch:.1f}, started->completed {work:.1f}"
        )
    child = [s.child_start for s in samples if s.child_start is not None]
    if child:
        parts.append(f"child start {statistics.median(child):.1f}")
    return f"  {side} at {step.label} (median ms of {len(samples)}): " + "; ".join(parts)


async def terminate_all(run: Run, workflow_ids: Iterable[str]) -> None:
    """Terminate workflows of this run (once each); already closed ones are skipped."""
    ids = [i for i in workflow_ids if i not in run.cleaned]
    run.cleaned.update(ids)
    gate = asyncio.Semaphore(16)

    async def terminate(workflow_id: str) -> None:
        async with gate:
            with contextlib.suppress(RPCError):  # already closed, or never started
                await run.temporal.get_workflow_handle(workflow_id).terminate(
                    reason=f"payments benchmark {run.token}: clean-up of its own workflows"
                )
                run.terminated += 1

    await asyncio.gather(*(terminate(i) for i in ids))


async def clean_up_notifications(run: Run, payment_ids: list[str]) -> None:
    """The notification children of these payments. Their payers exist only in the ledger,
    so each child's email step looks the customer up in Keycloak, gets a 404 and retries
    for days: real work inside the step that started them, a leftover load afterwards."""
    if run.args.keep_notifications:
        return
    ended = await payment_statuses(run, payment_ids)
    await terminate_all(
        run,
        (event_id(i, f"payment.{status}") for i, status in ended if status in TERMINAL_STATUSES),
    )


async def payment_statuses(run: Run, ids: list[str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    async with run.pool.connection() as conn:
        for chunk in range(0, len(ids), 2_000):
            cur = await conn.execute(
                "SELECT id, status FROM payments WHERE id = ANY(%s)", (ids[chunk : chunk + 2_000],)
            )
            found += [(str(i), str(s)) for i, s in await cur.fetchall()]
    return found


async def check_invariants(run: Run) -> tuple[list[str], list[str]]:
    """Problems (empty if none) and the lines that say what was checked."""
    lines = await run.ledger.trial_balance()
    report = [
        f"trial balance {line.currency}: debits {line.debits_posted}/{line.debits_pending} "
        f"credits {line.credits_posted}/{line.credits_pending} (posted/pending) "
        + ("balanced" if line.balanced else "NOT BALANCED")
        for line in lines
    ]
    problems = [r for r, line in zip(report, lines, strict=True) if not line.balanced]
    off = await run.ledger.conservation_errors()
    report.append(f"conservation: {'ok' if not off else f'{len(off)} accounts off: {off[:5]}'}")
    if off:
        problems.append(f"conservation: {len(off)} accounts off")
    accounts = await wallet_accounts(run)
    missing = sum(a is None for a in accounts)
    posted = sum(a.balance.posted for a in accounts if a is not None)
    pending = sum(a.balance.pending for a in accounts if a is not None)
    negative = sum(a.balance.available < 0 for a in accounts if a is not None)
    funded = FUNDING * len(run.wallets)
    report.append(
        f"this run's {len(run.wallets)} wallets: posted {posted} of {funded} funded, "
        f"pending {pending}, {negative} below zero, {missing} missing"
    )
    if posted != funded or missing or negative:
        problems.append("this run's wallets: money appeared, vanished or went below zero")
    return problems, report


# -- the report --------------------------------------------------------------------------


def sustained(steps: list[Step]) -> tuple[float, bool]:
    """The highest step rate that kept up (0.0 if none), and whether that was the top step."""
    kept = [s.rate for s in steps if s.kept_up]
    if not kept:
        return 0.0, False
    return max(kept), max(kept) == max(s.rate for s in steps)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def print_table(title: str, steps: list[Step], ack_name: str) -> None:
    header = (
        f"{'step':>7} {'sent':>5} {'shed':>5} {'acc':>5} {'ended':>5} {'lost':>5} "
        f"{'in/s':>6} {'done/s':>6} {ack_name + ' p50':>9} {'p99':>6} {'e2e p50':>8} "
        f"{'p99':>7} {'cpu ms':>7} {'net':>6} {'kept up':>7}"
    )
    print()
    print(title)
    print(header)
    print("-" * len(header))
    for s in steps:
        print(
            f"{s.label:>7} {s.fired:>5} {s.shed:>5} {s.accepted:>5} {s.terminal:>5} "
            f"{s.lost:>5} {fmt(s.arrival_rate):>6} {fmt(s.done_rate):>6} "
            f"{fmt(quantile_ms(s.ack, 0.5)):>9} {fmt(quantile_ms(s.ack, 0.99)):>6} "
            f"{fmt(quantile_ms(s.latencies, 0.5)):>8} {fmt(quantile_ms(s.latencies, 0.99)):>7} "
            f"{fmt(s.cpu_ms_per_op()):>7} {fmt(s.cpu_ms_per_op(net=True)):>6} "
            f"{'yes' if s.kept_up else 'no':>7}"
        )
    for s in steps:
        notes = []
        others = {k: v for k, v in s.statuses.items() if k not in {"succeeded", "completed"}}
        if others:
            notes.append(f"statuses {dict(s.statuses)}")
        if s.errors:
            notes.append(f"refused {dict(s.errors)}")
        if s.cpu_total is None and s.cpu:
            gone = [n for n, v in s.cpu.items() if v is None]
            notes.append(f"cpu n/a: {', '.join(gone)} restarted or not running")
        if s.terminal:
            shares = {**s.cpu, **{f"+{n}": v for n, v in s.cpu_other.items()}}
            notes.append(
                "cpu ms each: "
                + ", ".join(
                    f"{n} {'-' if v is None else f'{v / s.terminal * 1000:.1f}'}"
                    for n, v in shares.items()
                )
            )
        if s.max_lag > 0.05:
            notes.append(f"generator up to {s.max_lag * 1000:.0f} ms late")
        if notes:
            print(f"  {s.label}: " + "; ".join(notes))


def ratio_verdict(ratio: float, *, measured: bool, pay_top: bool, bare_top: bool) -> str:
    """A side whose top step kept up was not saturated: its real rate is higher, so the
    ratio is only a bound, or nothing at all when both sides kept up to the top."""
    if not measured:
        return "not measured"
    ok = ratio >= TARGET_RATIO
    if pay_top and bare_top:
        return "undecided (neither side reached its limit)"
    if bare_top:  # the real ratio is lower than shown
        return "NOT met" if not ok else "undecided (at most this: the bare side was not saturated)"
    if pay_top:  # the real ratio is higher than shown
        return "met" if ok else "undecided (at least this: payments were not saturated)"
    return "met" if ok else "NOT met"


def targets(
    payments: list[Step], bare: list[Step], low_rate: float
) -> tuple[list[str], dict[str, Any]]:
    pay_rate, pay_top = sustained(payments)
    bare_rate, bare_top = sustained(bare)
    ratio = pay_rate / bare_rate if bare_rate else float("nan")
    low = next((s for s in payments if s.rate == low_rate), None)
    low_p50 = quantile_ms(low.latencies, 0.5) if low else float("nan")
    # POST acknowledgement at every load the platform sustained (the low step if none).
    within = [s for s in payments if s.rate <= max(pay_rate, low_rate)]
    ack_p99 = max((quantile_ms(s.ack, 0.99) for s in within if s.ack), default=float("nan"))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    plus = "+" if pay_top else ""
    bare_plus = "+" if bare_top else ""
    lines = [
        f"sustained payments/s        {pay_rate:g}{plus}   target >= {TARGET_SUSTAINED:g}: "
        f"{verdict(pay_rate >= TARGET_SUSTAINED)}",
        f"p50 start-to-terminal @{low_rate:g}/s  {fmt(low_p50)} ms   target < "
        f"{TARGET_LOW_P50_MS:g} ms: {verdict(low_p50 < TARGET_LOW_P50_MS)}",
        f"POST ack p99 (<= {max(pay_rate, low_rate):g}/s)  {fmt(ack_p99)} ms   target < "
        f"{TARGET_ACK_P99_MS:g} ms: {verdict(ack_p99 < TARGET_ACK_P99_MS)}",
        f"bare workflow sustained/s   {bare_rate:g}{bare_plus}"
        if bare
        else "bare workflow: not run",
        f"ratio payments/bare         {fmt(ratio, 2)}   target >= {TARGET_RATIO:g}: "
        + ratio_verdict(ratio, measured=bool(bare), pay_top=pay_top, bare_top=bare_top),
    ]
    if pay_top or bare_top:
        lines.append("(+: the top step kept up; the real limit is higher than the ramp went)")
    summary = {
        "sustained_payments_per_s": pay_rate,
        "sustained_bare_per_s": bare_rate,
        "ratio": None if math.isnan(ratio) else ratio,
        "low_step_p50_ms": None if math.isnan(low_p50) else low_p50,
        "post_ack_p99_ms": None if math.isnan(ack_p99) else ack_p99,
    }
    return lines, summary


def step_json(s: Step) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 3)

    return {
        "side": s.side,
        "rate": s.rate,
        "seconds": s.seconds,
        "scheduled": s.scheduled,
        "fired": s.fired,
        "shed": s.shed,
        "accepted": s.accepted,
        "ended": s.terminal,
        "lost": s.lost,
        "refused": dict(s.errors),
        "statuses": dict(s.statuses),
        "arrivals_per_s": num(s.arrival_rate),
        "completions_per_s": num(s.done_rate),
        "ack_p50_ms": num(quantile_ms(s.ack, 0.5)),
        "ack_p99_ms": num(quantile_ms(s.ack, 0.99)),
        "e2e_p50_ms": num(quantile_ms(s.latencies, 0.5)),
        "e2e_p99_ms": num(quantile_ms(s.latencies, 0.99)),
        "cpu_seconds": s.cpu,
        "cpu_seconds_other": s.cpu_other,
        "cpu_ms_per_op": num(s.cpu_ms_per_op()),
        "cpu_ms_per_op_net_of_idle": num(s.cpu_ms_per_op(net=True)),
        "window_seconds": round(s.window, 2),
        "kept_up": s.kept_up,
    }


# -- main --------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    rates = [args.low_rate, *args.rates]
    if args.order == "alternate":
        return [(side, r) for r in rates for side in ("payments", "bare")]
    return [("payments", r) for r in rates] + [("bare", r) for r in rates]


async def run_steps(run: Run) -> tuple[list[Step], list[Step]]:
    args = run.args
    payments: list[Step] = []
    bare: list[Step] = []
    misses = {"payments": 0, "bare": 0}
    worker = Worker(
        run.temporal,
        task_queue=run.bare_queue,
        workflows=[BareWorkflow],
        activities=[noop],
        **worker_tuning(),
    )
    async with worker:
        if args.warmup:  # connections, pools and caches: unmeasured
            warm = await payment_step(run, args.low_rate, args.warmup / args.low_rate, warmup=True)
            await clean_up_notifications(run, warm.ids)
            await bare_step(run, args.low_rate, args.warmup / args.low_rate, warmup=True)
        for side, rate in plan(args):
            if side not in args.sides or (args.stop_after and misses[side] >= args.stop_after):
                continue
            await asyncio.sleep(args.settle_seconds)
            if side == "payments":
                step = await payment_step(run, rate, args.seconds)
                payments.append(step)
                # After the step is measured, so that they do not load the steps after it.
                await clean_up_notifications(run, step.ids)
            else:
                step = await bare_step(run, rate, args.seconds)
                bare.append(step)
            misses[side] = 0 if step.kept_up else misses[side] + 1
    return payments, bare


def app_settings() -> tuple[Settings, Stack]:
    """Settings as the platform's processes have them: with the stack's Vault AppRole."""
    settings = Settings()
    stack = Stack(settings)
    if settings.vault_role_id is None:
        creds = json.loads(stack.vault.approle_file.read_text())
        settings = Settings(
            vault_role_id=creds["role_id"], vault_secret_id=SecretStr(creds["secret_id"])
        )
    return settings, stack


def logins(settings: Settings, staff_user: str) -> tuple[Token, Token]:
    """The staff user (dev password ``dev-<name>``) and the app, whose secret is in Vault."""
    app_creds = SecretStore(connect_vault(settings), settings).read("keycloak")
    staff = Token(staff_user, lambda: password_login(settings, staff_user, f"dev-{staff_user}"))
    app = Token(
        app_creds["client_id"],
        lambda: client_credentials_login(
            settings, app_creds["client_id"], app_creds["client_secret"]
        ),
    )
    return staff, app


@dataclass
class Results:
    payments: list[Step] = field(default_factory=list)
    bare: list[Step] = field(default_factory=list)
    gap_lines: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def measure(run: Run, payers: int) -> Results:
    results = Results()
    await set_up(run, payers)
    await measure_idle(run, run.args.idle_seconds)
    results.payments, results.bare = await run_steps(run)
    for side, steps in (("payment", results.payments), ("bare", results.bare)):
        # The lowest step and the highest one run: where the time goes, and whether that
        # moves under load.
        for step in steps[:1] + steps[1:][-1:]:
            results.gap_lines.append(describe_gaps(side, step, await sample_gaps(run, step)))
    # What ended after its step's clean-up, and bare workflows that never ended.
    await clean_up_notifications(run, run.payment_ids)
    await terminate_all(run, sorted(run.bare_open_ids))
    results.problems, results.checks = await check_invariants(run)
    return results


def print_report(run: Run, results: Results) -> dict[str, Any]:
    args = run.args
    print_table("payments through the API (transfer; e2e = payments.completed_at - created_at)",
                results.payments, "POST")  # fmt: skip
    print_table(f"bare Temporal workflow ({len(STEPS)} no-op LAs, e2e = start->result)",
                results.bare, "start")  # fmt: skip
    idle = ", ".join(f"{n} {v * 100:.1f}%" for n, v in run.idle_rates.items())
    print(
        f"sent/acc/ended/lost: arrivals fired, accepted (202 / started), ended within "
        f"{args.drain_seconds:g} s of the step, not ended by then. in/s: arrivals per second; "
        f"done/s: ended / (last end - first arrival). kept up: nothing shed, refused or lost "
        f"and done/s >= {KEPT_UP:.0%} of the step's rate. cpu ms: CPU per ended workflow from "
        f"the start of the step "
        f"to the end of its drain: payments {' + '.join(STACK_CPU)} (postgres with its "
        f"children), bare temporal + this process (bare worker, client, load generator); "
        f"net: less the same processes' idle use (idle, % of one core: {idle})."
    )
    print()
    print("inside the workflows (event times from the histories):")
    for line in results.gap_lines:
        print(line)
    print()
    lines, summary = targets(results.payments, results.bare, args.low_rate)
    print("targets (informative only):")
    for line in lines:
        print(f"  {line}")
    print()
    kept = " (notification children kept)" if args.keep_notifications else ""
    print(
        f"clean-up: {run.terminated} of {len(run.cleaned)} workflows of this run terminated "
        f"(its payments' notification children after each step, bare ones left open){kept}"
    )
    print(f"tokens fetched: {run.staff.name} {run.staff.fetches}, {run.app.name} {run.app.fetches}")
    for line in results.checks:
        print(line)
    for problem in results.problems:
        print(f"INVARIANT BROKEN: {problem}")
    return summary


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    token = secrets.token_hex(4)
    settings, stack = app_settings()
    staff, app = logins(settings, args.staff)
    await asyncio.gather(staff.refresh(), app.refresh())
    total = round(args.low_rate * args.seconds) + sum(round(r * args.seconds) for r in args.rates)
    payers = math.ceil((total + args.warmup) / PAYMENTS_PER_PAYER) + 1
    pool = create_ledger_pool(settings, min_size=1, max_size=8)
    await pool.open(wait=True)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=settings.api_url, timeout=30, limits=limits) as http:
        run = Run(
            token=token,
            args=args,
            stack=stack,
            http=http,
            temporal=await connect_temporal(settings),
            pool=pool,
            ledger=LedgerStore(pool),
            staff=staff,
            app=app,
            rng=random.Random(args.seed),  # noqa: S311 - workload shape, not security
            bare_queue=f"bench-bare-{token}",
        )
        order = (
            "payment and bare steps alternate per rate"
            if args.order == "alternate"
            else "all payment steps, then all bare steps"
        )
        print(
            f"payments bench run {token}: API {settings.api_url}, Temporal "
            f"{settings.temporal_address}, {os.cpu_count()} CPUs; steps {args.low_rate:g}, "
            f"{', '.join(f'{r:g}' for r in args.rates)} /s x {args.seconds:g} s; {order} "
            f"(never at the same time); {payers} wallets of this run pay each other",
            flush=True,
        )
        worker = run.record("worker")
        print(
            f"machine load average {os.getloadavg()[0]:.2f}; stack worker "
            + (f"pid {worker.pid} since {worker.started_at}" if worker else "NOT running"),
            flush=True,
        )
        refresher = asyncio.create_task(keep_fresh([staff, app]))
        try:
            results = await measure(run, payers)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await run.ledger.close()
            await pool.close()
    summary = print_report(run, results)
    elapsed = time.perf_counter() - started
    print(f"run time {elapsed:.1f} s; machine load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        document = {
            "run": token,
            "at": datetime.now(UTC).isoformat(),
            "cpus": os.cpu_count(),
            "order": args.order,
            "idle_cpu_cores": run.idle_rates,
            "steps": [step_json(s) for s in results.payments + results.bare],
            "summary": summary,
            "invariants_ok": not results.problems,
            "problems": results.problems,
            "run_seconds": round(elapsed, 1),
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if results.problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of every step")
    parser.add_argument("--low-rate", type=float, default=5.0, help="the first step, per second")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",") if r],
        default=[20.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 70.0, 80.0],
        help="the ramp after the first step, comma-separated per-second rates",
    )
    parser.add_argument("--drain-seconds", type=float, default=60.0, help="after a step: lost")
    parser.add_argument("--max-in-flight", type=int, default=800, help="over it: shed")
    parser.add_argument(
        "--order",
        choices=["alternate", "sequential"],
        default="alternate",
        help="payment and bare steps alternate per rate, or all payments first",
    )
    parser.add_argument(
        "--sides", nargs="+", choices=["payments", "bare"], default=["payments", "bare"]
    )
    parser.add_argument(
        "--stop-after", type=int, default=2, help="consecutive steps not kept up (0: never)"
    )
    parser.add_argument("--settle-seconds", type=float, default=2.0, help="pause before a step")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured, each side")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle CPU sample")
    parser.add_argument("--currency", default="EUR")
    parser.add_argument("--staff", default="admin", help="dev staff login for the set-up")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--keep-notifications",
        action="store_true",
        help="leave the payments' notification workflows running",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.low_rate <= 0 or any(r <= 0 for r in args.rates):
        parser.error("rates and --seconds must be positive")
    return args


def main() -> None:
    # The worker's event loop (workers/main.py), so the bare worker runs like the real one.
    sys.exit(uvloop.run(main_async(parse_args())))


if __name__ == "__main__":
    main()
