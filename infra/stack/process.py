"""Background processes the stack starts, remembered by process id in a small JSON record.

We stop only processes we started: a record names the pid (which is also the process group
we gave it), the executable, and the process's start time since boot with the boot's id. A
pid whose start time or boot differs was reused by another program (after a reboot, or
once pids wrapped around) and counts as gone, whatever its command line says.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@functools.cache
def _boot_id() -> str:
    """This boot's id: the same for as long as this process lives (read once)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# Indexes into stat_fields, which starts at field 3 of /proc/<pid>/stat.
STATE, PARENT, PROCESS_GROUP, START_TIME = 0, 1, 2, 19


def stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (the state) on: the command name before it, in
    parentheses, may itself hold spaces and parentheses."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (field 22): fixed for its life,
    across exec, and different for a later process that gets the same pid."""
    return int(stat_fields(pid)[START_TIME])


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` right now."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat_fields(int(entry.name))[PARENT]) == pid:
                children.append(int(entry.name))
    return children


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    executable: str
    started_at: str
    # None in records written before these were kept: the command line decides alone.
    start_ticks: int | None = None
    boot_id: str | None = None
    # [pid, start ticks] of the children the process had started by the time it was ready
    # (kc.sh runs Keycloak's JVM as its child): ours too, and still running if it is killed.
    members: list[list[int]] = field(default_factory=list)

    def is_alive(self) -> bool:
        """The process, or one of its recorded children, still runs."""
        return self.leader_alive() or bool(self.live_members())

    def live_members(self) -> list[int]:
        return [pid for pid, ticks in self.members if self._same(pid, ticks)]

    def _same(self, pid: int, ticks: int) -> bool:
        try:
            fields = stat_fields(pid)
        except OSError:
            return False
        alive = fields[STATE] not in ("Z", "X")
        return alive and int(fields[START_TIME]) == ticks and _boot_id() == self.boot_id

    def leader_alive(self) -> bool:
        try:
            fields = stat_fields(self.pid)
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        # Z (zombie) or X (dead) has exited, whether or not anyone has reaped it yet.
        if fields[STATE] in ("Z", "X"):
            return False
        if self.start_ticks is not None:
            # The pid's own process, not a later one that got the same number.
            return int(fields[START_TIME]) == self.start_ticks and _boot_id() == self.boot_id
        # An empty command line is a process between fork and exec: still the one we started.
        # Otherwise one of its arguments is the executable (a script's is the second, after
        # its interpreter); a name merely inside an argument (``test_postgres.py``) is not.
        name = os.path.basename(self.executable).encode()
        return not cmdline or any(os.path.basename(arg) == name for arg in cmdline.split(b"\0"))


def set_cpu_nice(pid: int, nice: int) -> str | None:
    """Give a process we started this CPU priority; the reason if it could not be done.

    Each process of the stack leads a session of its own, and with the kernel's autogroup
    scheduling on, a session is a scheduling group: the group's nice, not the process's,
    decides its share against the others. Without autogroup the process's own nice does
    (its main thread's, where an event loop runs)."""
    autogroup = Path(f"/proc/{pid}/autogroup")
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        if enabled and autogroup.exists():
            autogroup.write_text(f"{nice}\n")
        else:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_as(user: str | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` with that user's own group and
    no other. ``user=`` alone keeps root's group: a folder of group root without group bits
    (``/root``, or a private temporary folder, made traversable by others) then refuses the
    child, as the group's bits, not the others', apply to a member of the group."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


class ProcessTable:
    """Records of the processes started from one stack directory."""

    def __init__(self, stack_path: Path) -> None:
        self.run_dir = stack_path / "run"
        self.log_dir = stack_path / "logs"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def get(self, name: str) -> ProcessRecord | None:
        """The live process recorded for ``name``; a stale record is removed."""
        path = self._record_path(name)
        try:
            record = ProcessRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if record.is_alive():
            return record
        path.unlink(missing_ok=True)
        return None

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        umask: int = -1,
    ) -> ProcessRecord:
        """Start ``argv`` detached, in a session of its own, output appended to its log;
        ``umask`` for a process whose files must stay private (-1: ours)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path(name)
        with log.open("ab") as out:
            out.write(f"--- {datetime.now(UTC).isoformat()} start: {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                umask=umask,
                **run_as(user),
            )
        record = ProcessRecord(
            name=name,
            pid=proc.pid,
            executable=argv[0],
            started_at=datetime.now(UTC).isoformat(),
            start_ticks=start_ticks(proc.pid),
            boot_id=_boot_id(),
        )
        self._write(record)
        return record

    def adopt_children(self, name: str) -> None:
        """Record the children the process has started so far as part of it, so that
        they are found and stopped with it even once it is gone itself."""
        record = self.get(name)
        if record is None:
            return
        live = set(record.live_members())
        members = [[pid, ticks] for pid, ticks in record.members if pid in live]
        for pid in set(children_of(record.pid)) - live:
            with contextlib.suppress(OSError):  # gone already
                members.append([pid, start_ticks(pid)])
        self._write(replace(record, members=members))

    def _write(self, record: ProcessRecord) -> None:
        # Whole or not at all: a half-written record would hide a running process.
        path = self._record_path(record.name)
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(asdict(record)))
        partial.replace(path)

    def stop(
        self, name: str, *, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0
    ) -> bool:
        """Stop the recorded process group; True if something was running."""
        record = self.get(name)
        if record is None:
            return False
        # The process leads its own session (start_new_session), so its group id is its pid:
        # signalling the group also ends children such as the JVM that kc.sh starts. Its
        # recorded children are signalled by pid too, in case the group is gone with it.
        _signal_all(record, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not record.is_alive():
                break
            time.sleep(0.1)
        else:
            _signal_all(record, signal.SIGKILL)
        _reap(record.pid)
        self._record_path(name).unlink(missing_ok=True)
        return True


def _signal_all(record: ProcessRecord, sig: signal.Signals) -> None:
    members = record.live_members()  # each one checked by its start time just now
    # The group's id is the leader's pid: only while the leader or one of ours is in the
    # group can that id not have gone to another program's group.
    if record.leader_alive() or any(_group_of(pid) == record.pid for pid in members):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _group_of(pid: int) -> int | None:
    try:
        return int(stat_fields(pid)[PROCESS_GROUP])
    except OSError:
        return None


def _reap(pid: int) -> None:
    # A child of this very process (started in the same `bfc` run) must be reaped, or it
    # lingers as a zombie; for anyone else's child this is a no-op.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
