"""PostgreSQL: migrated to head at `up`; the audit log cannot be edited after the fact; the
pool gets over its connections being cut (as by a database restart) after one failure."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from infra.audit import list_audit_events, record_audit_event
from infra.ledger_store import create_ledger_pool
from infra.migrations.runner import current_revision, head_revision
from infra.settings import Settings
from infra.stack.launcher import Stack


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root stack runs PostgreSQL as another user")
def test_a_stack_under_a_private_root_folder_starts_postgres(tmp_path: Path) -> None:
    # Like a checkout in /root: a folder of group root with no group bits. The stack grants
    # others the traverse bit; a server run with root's group was still refused, as the
    # group's bits, not the others', apply to a member of the group.
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stack = Stack(Settings(stack_dir=private / ".stack", postgres_port=port))
    try:
        stack.up(("postgres",))
        assert stack.status()["postgres"].state == "healthy"
    finally:
        stack.down(("postgres",))


def test_database_is_at_the_newest_migration(settings: Settings) -> None:
    assert head_revision() is not None
    assert current_revision(settings) == head_revision()


def test_audit_events_are_recorded_in_order(engine: Engine, unique: str) -> None:
    subject = f"pay_{unique}"
    with Session(engine) as session:
        record_audit_event(session, actor="carol", action="review.opened", subject=subject)
        record_audit_event(
            session, actor="carol", action="review.approved", subject=subject, details={"n": 1}
        )
        session.commit()
    with Session(engine) as session:
        events = list_audit_events(session, subject=subject)
    assert [e.action for e in events] == ["review.opened", "review.approved"]
    assert events[1].details == {"n": 1}
    assert events[0].occurred_at is not None
    assert events[0].occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor = 'mallory' WHERE subject = :subject",
        "DELETE FROM audit_events WHERE subject = :subject",
        "TRUNCATE audit_events",
    ],
)
def test_the_audit_log_refuses_edits(engine: Engine, unique: str, statement: str) -> None:
    subject = f"pay_{unique}"
    with Session(engine) as session:
        record_audit_event(session, actor="olivia", action="payment.viewed", subject=subject)
        session.commit()
    with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text(statement), {"subject": subject})
    with Session(engine) as session:
        assert [e.actor for e in list_audit_events(session, subject=subject)] == ["olivia"]


async def test_the_pool_replaces_its_cut_connections_after_the_first_failure(
    settings: Settings,
) -> None:
    """What a database restart does to a pool, on this pool's connections only: their
    server processes end. Without the check on the first broken connection, each of the
    other two would fail one more caller."""
    pool = create_ledger_pool(settings, min_size=3, max_size=3)
    await pool.open(wait=True)
    try:
        async with AsyncExitStack() as held:  # all three at once: three server processes
            conns = [await held.enter_async_context(pool.connection()) for _ in range(3)]
            pids = [conn.info.backend_pid for conn in conns]
        conninfo = str(pool.conninfo)  # a plain string: create_ledger_pool builds one
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,)
            )

        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        # The check starts as a task of its own: from its first step on, callers wait for
        # the connections it has found alive or made anew.
        await asyncio.sleep(0)
        for _ in range(3):
            async with pool.connection(timeout=10) as conn:
                cur = await conn.execute("SELECT pg_backend_pid()")
                row = await cur.fetchone()
                assert row is not None and row[0] not in pids
    finally:
        await pool.close()


async def test_after_a_broken_connection_a_server_that_answers_is_waited_for_as_usual(
    settings: Settings,
) -> None:
    """The API's pool (``outage_timeout``): a broken connection makes the next caller try
    the server itself; it answers, so nobody is refused and the pool's own wait applies.
    (Refused at once while the server is down: ``test_payments_survive_a_postgres_restart``.)"""
    pool = create_ledger_pool(settings, min_size=1, max_size=1, timeout=1.5, outage_timeout=0.2)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(
            str(pool.conninfo), autocommit=True
        ) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        async with pool.connection() as held:
            await held.execute("SELECT 1")
            # The pool is exhausted, not the server down: the full wait, not a fast refusal.
            t0 = time.monotonic()
            with pytest.raises(PoolTimeout):
                await pool.getconn()
            assert time.monotonic() - t0 >= 1.4
    finally:
        await pool.close()
