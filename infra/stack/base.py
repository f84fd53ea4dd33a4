"""What every service of the local stack offers the launcher."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from infra.settings import Settings
from infra.stack.process import ProcessRecord, ProcessTable, port_is_open

State = Literal["healthy", "starting", "unhealthy", "stopped"]


class StackError(RuntimeError):
    """A service cannot be installed or started here; the message is one line for a person."""


@dataclass(frozen=True)
class Health:
    state: State
    detail: str = ""


def venv_bin(name: str) -> str:
    """A console script or binary installed next to this interpreter (the project's .venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"'{name}' is not installed; run `make install` first")
    return found


def temporal_cli(settings: Settings, *args: str, timeout: float = 5) -> str:
    """Ask the Temporal server something through the ``temporal`` binary.

    The launcher probes with the CLI rather than the Python SDK client: the SDK's native
    runtime keeps threads that can abort a short-lived process at interpreter exit.
    """
    argv = [venv_bin("temporal"), *args, "--address", settings.temporal_address]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"temporal {' '.join(args)}: no answer in {timeout:.0f}s") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StackError(lines[-1] if lines else f"temporal {' '.join(args)} failed")
    return done.stdout


def wait_until(probe: Callable[[], Health], *, timeout: float, what: str) -> Health:
    deadline = time.monotonic() + timeout
    health = probe()
    while health.state != "healthy":
        if time.monotonic() > deadline:
            raise StackError(f"{what} not healthy after {timeout:.0f}s: {health.detail}")
        time.sleep(0.25)
        health = probe()
    return health


class Service:
    """A background process of the stack. Subclasses say how to install, start and probe it."""

    name: str
    start_timeout: float = 60.0

    def __init__(self, settings: Settings, table: ProcessTable) -> None:
        self.settings = settings
        self.table = table
        self.home = settings.stack_path / self.name

    # -- to be provided by each service ------------------------------------------------
    def ports(self) -> tuple[int, ...]:
        """Loopback ports the service listens on; they must be free before it starts."""
        return ()

    def install(self) -> None:
        """Fetch or lay out what the service needs; idempotent and quick when done."""

    def launch(self) -> ProcessRecord:
        raise NotImplementedError

    def probe(self) -> Health:
        raise NotImplementedError

    def probe_started(self) -> Health:
        """Answers at all; a service that needs configuring before it is healthy overrides it."""
        return self.probe()

    def configure(self) -> None:
        """Bring a running service to the state the platform expects; idempotent."""

    def urls(self) -> dict[str, str]:
        return {}

    # -- shared behaviour ----------------------------------------------------------------
    def running(self) -> ProcessRecord | None:
        return self.table.get(self.name)

    def start(self) -> bool:
        """Start the service unless our process for it is already running."""
        if self.running() is not None:
            return False
        for port in self.ports():
            if port_is_open(self.settings.host, port):
                raise StackError(
                    f"{self.name}: port {port} is already in use by a process this stack did "
                    f"not start; stop it or choose another port (see README, settings)"
                )
        self.install()
        self.launch()
        return True

    def wait_ready(self) -> None:
        wait_until(self.probe_started, timeout=self.start_timeout, what=self.name)
        self.configure()
        wait_until(self.probe, timeout=self.start_timeout, what=self.name)

    def status(self) -> Health:
        if self.running() is None:
            return Health("stopped")
        return self.probe()

    def stop(self) -> bool:
        return self.table.stop(self.name)
