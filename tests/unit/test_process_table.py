"""The launcher's process records: start detached, stop the whole group, forget the dead."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from infra.settings import Settings
from infra.stack.base import StackError
from infra.stack.keycloak import KeycloakService, verify_archive
from infra.stack.launcher import Stack
from infra.stack.process import (
    ProcessTable,
    children_of,
    port_is_open,
    set_cpu_nice,
    start_ticks,
)
from infra.stack.temporal import TemporalService
from tests.helpers.processes import effective_nice


def _wait_exit(pid: int) -> None:
    """Reap our child, or, when another part of the test process already reaped it (an
    event loop's child watcher does), wait until it is gone."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        deadline = time.monotonic() + 5
        while not _gone(pid):
            assert time.monotonic() < deadline, f"process {pid} did not exit"
            time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def test_stop_ends_the_process_and_its_children(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    # A shell with a child, like kc.sh starting the JVM: stopping must end both.
    pid_file = tmp_path / "child.pid"
    record = table.start("sleeper", ["/bin/sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"])
    deadline = time.monotonic() + 5
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the shell never started its child"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    assert table.get("sleeper") == record

    assert table.stop("sleeper", timeout=5) is True
    assert _gone(record.pid)
    assert _gone(child_pid)
    assert table.get("sleeper") is None
    assert table.stop("sleeper") is False


def test_a_record_of_a_dead_or_reused_pid_counts_as_not_running(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    record = table.start("short", ["/bin/true"])
    _wait_exit(record.pid)
    assert table.get("short") is None
    assert not (tmp_path / "run" / "short.json").exists()

    # Our own pid is alive but is not the recorded executable: never signal it.
    imposter = {
        "name": "imposter",
        "pid": os.getpid(),
        "executable": "/usr/bin/postgres",
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    (tmp_path / "run" / "imposter.json").write_text(json.dumps(imposter))
    assert table.get("imposter") is None
    assert table.stop("imposter") is False


def _never_signalled(table: ProcessTable, name: str, other: subprocess.Popen[bytes]) -> None:
    """The record names ``other``'s pid, but ``other`` is not ours: it is neither running
    as ``name`` nor stopped."""
    assert table.get(name) is None
    assert table.stop(name) is False
    assert other.poll() is None


def test_a_process_that_only_mentions_the_executable_is_not_it(tmp_path: Path) -> None:
    # Like a test run over test_postgres.py, with the pid of a postgres that has exited.
    other = subprocess.Popen(["/bin/sh", "-c", "sleep 30; true", "run-test_postgres.py"])
    try:
        table = ProcessTable(tmp_path)
        (tmp_path / "run").mkdir()
        record = {
            "name": "postgres",
            "pid": other.pid,
            "executable": "/usr/lib/postgresql/bin/postgres",
            "started_at": "2026-01-01T00:00:00+00:00",
        }
        (tmp_path / "run" / "postgres.json").write_text(json.dumps(record))
        _never_signalled(table, "postgres", other)
    finally:
        other.kill()
        other.wait()


def test_a_port_taken_by_someone_else_stops_up_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        settings = Settings(stack_dir=tmp_path, temporal_port=port)
        service = TemporalService(settings, ProcessTable(settings.stack_path))
        with pytest.raises(StackError, match=f"port {port} is already in use"):
            service.start()
    assert service.running() is None
    assert not port_is_open("127.0.0.1", port)


def test_logs_keep_what_each_start_printed(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    for word in ("first", "second"):
        record = table.start("echo", ["/bin/echo", word])
        _wait_exit(record.pid)
    log = table.log_path("echo").read_text()
    assert log.index("first") < log.index("second")


def test_keycloak_without_java_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn here
    settings = Settings(stack_dir=tmp_path)
    service = KeycloakService(settings, ProcessTable(settings.stack_path))
    with pytest.raises(StackError) as refused:
        service.install()
    message = str(refused.value)
    assert "java" in message
    assert "\n" not in message


def test_a_pid_now_held_by_another_program_of_the_same_name_is_not_ours(
    tmp_path: Path,
) -> None:
    """The record's pid runs the recorded executable, but it is not the process we
    started: it began at another time (the pid was reused). It must not be signalled."""
    table = ProcessTable(tmp_path)
    ours = table.start("sleeper", ["/bin/sleep", "30"])
    time.sleep(0.05)  # start times count in ticks of 10 ms; a reused pid comes far later
    stranger = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True)
    try:
        record = json.loads((tmp_path / "run" / "sleeper.json").read_text())
        assert record["start_ticks"] == start_ticks(ours.pid)
        (tmp_path / "run" / "sleeper.json").write_text(json.dumps({**record, "pid": stranger.pid}))
        _never_signalled(table, "sleeper", stranger)
    finally:
        stranger.kill()
        stranger.wait()
        os.killpg(ours.pid, 9)
        _wait_exit(ours.pid)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_start_that_fails_midway_stops_what_it_started(tmp_path: Path) -> None:
    """The mail sink starts; then the card gateway cannot get its key (no Vault in this
    folder): up() fails, and leaves nothing it started running."""
    smtp_port = _free_port()
    settings = Settings(
        stack_dir=tmp_path, smtp_port=smtp_port, vault_port=_free_port(),
        gateway_port=_free_port(),
    )  # fmt: skip
    stack = Stack(settings)
    with pytest.raises(Exception):  # noqa: B017 - whatever Vault's absence raises
        stack.up(("smtp", "gateway"))
    assert stack.table.get("smtp") is None
    assert not list((tmp_path / "run").glob("*.json"))
    assert not port_is_open("127.0.0.1", smtp_port)


def test_a_keycloak_archive_not_matching_its_pinned_digest_is_refused_and_deleted(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "keycloak-quarkus-dist-0.zip"
    archive.write_bytes(b"the distribution")
    pinned = hashlib.sha256(b"the distribution").hexdigest()
    verify_archive(archive, pinned.upper())  # as published, in either case
    assert archive.exists()

    archive.write_bytes(b"the distribution, altered")
    with pytest.raises(StackError, match="BFC_KEYCLOAK_SHA256"):
        verify_archive(archive, pinned)
    assert not archive.exists()  # the next start fetches it again


def test_a_child_its_killed_leader_left_running_is_still_ours_and_is_stopped(
    tmp_path: Path,
) -> None:
    """kc.sh runs Keycloak's JVM as a child: with kc.sh killed, the JVM must neither be
    forgotten (holding the port, "in use by a process this stack did not start") nor
    outlive ``stop``."""
    table = ProcessTable(tmp_path)
    leader = table.start("launcher", ["/bin/sh", "-c", "sleep 30 & wait"])
    deadline = time.monotonic() + 5
    while not children_of(leader.pid):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    table.adopt_children("launcher")
    [child] = children_of(leader.pid)

    os.kill(leader.pid, signal.SIGKILL)
    _wait_exit(leader.pid)
    kept = table.get("launcher")
    assert kept is not None and kept.live_members() == [child]

    assert table.stop("launcher", timeout=5)
    deadline = time.monotonic() + 5
    while not _gone(child):
        assert time.monotonic() < deadline, f"child {child} outlived stop"
        time.sleep(0.02)
    assert table.get("launcher") is None


def test_a_started_process_gets_the_cpu_priority_asked_for(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    record = table.start("sleeper", ["/bin/sleep", "30"])
    try:
        assert effective_nice(record.pid) == 0
        assert set_cpu_nice(record.pid, 3) is None  # lower priority: anyone may ask it
        assert effective_nice(record.pid) == 3
    finally:
        table.stop("sleeper", timeout=5)
