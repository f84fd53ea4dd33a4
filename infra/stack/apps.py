"""Our own processes: the API (uvicorn) and a Temporal worker.

They are started after the servers they need and get the AppRole credentials for Vault in
their environment; everything else they read from settings.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import httpx

from infra.stack.base import Health, Service, StackError, temporal_cli
from infra.stack.process import ProcessRecord


class AppService(Service):
    """A Python process of ours; ``extra_env`` carries what the launcher hands it."""

    extra_env: dict[str, str]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(getattr(self, "extra_env", {}))
        env["BFC_STACK_DIR"] = str(self.settings.stack_path)
        return env


class ApiService(AppService):
    name = "api"
    start_timeout = 60.0

    def ports(self) -> tuple[int, ...]:
        return (self.settings.api_port,)

    def launch(self) -> ProcessRecord:
        s = self.settings
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:create_app",
            "--factory",
            "--host",
            s.host,
            "--port",
            str(s.api_port),
            "--no-access-log",
        ]
        return self.table.start(self.name, argv, env=self.env())

    def probe(self) -> Health:
        try:
            response = httpx.get(f"{self.settings.api_url}/healthz", timeout=2)
        except httpx.HTTPError as exc:
            return Health("starting", str(exc))
        if response.status_code != 200:
            return Health("unhealthy", f"/healthz answered {response.status_code}")
        return Health("healthy", self.settings.api_url)

    def urls(self) -> dict[str, str]:
        return {"API docs": f"{self.settings.api_url}/docs"}


class SmtpSinkService(AppService):
    """The outside world's mail servers, played by a sink that keeps every message."""

    name = "smtp"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.smtp_port,)

    @property
    def mailbox(self) -> Path:
        return self.home / "mailbox"

    def launch(self) -> ProcessRecord:
        self.mailbox.mkdir(parents=True, exist_ok=True)
        env = {
            **self.env(),
            "BFC_SMTP_PORT": str(self.settings.smtp_port),
            "BFC_SMTP_MAILBOX": str(self.mailbox),
        }
        return self.table.start(
            self.name, [sys.executable, "-m", "infra.sandbox.smtp_sink"], env=env
        )

    def probe(self) -> Health:
        try:
            with socket.create_connection(
                (self.settings.smtp_host, self.settings.smtp_port), 2
            ) as s:
                banner = s.recv(100)
        except OSError as exc:
            return Health("starting", str(exc))
        if not banner.startswith(b"220"):
            return Health("unhealthy", f"unexpected banner {banner!r}")
        return Health(
            "healthy", f"{self.settings.smtp_host}:{self.settings.smtp_port} -> {self.mailbox}"
        )

    def urls(self) -> dict[str, str]:
        return {"SMTP sink (mailbox)": f"{self.settings.smtp_host}:{self.settings.smtp_port}"}


class WorkerService(AppService):
    name = "worker"
    start_timeout = 60.0

    def launch(self) -> ProcessRecord:
        return self.table.start(self.name, [sys.executable, "-m", "workers.main"], env=self.env())

    def probe(self) -> Health:
        record = self.running()
        if record is None:
            return Health("stopped")
        try:
            described = temporal_cli(
                self.settings,
                "task-queue", "describe",
                "--task-queue", self.settings.task_queue,
                "--namespace", self.settings.temporal_namespace,
                "--output", "json",
            )  # fmt: skip
            identities = [p["identity"] for p in json.loads(described).get("pollers") or []]
        except (StackError, ValueError) as exc:
            return Health("starting", str(exc))
        # Temporal remembers pollers for minutes after they go; only our live pid counts.
        if not any(identity.startswith(f"{record.pid}@") for identity in identities):
            return Health("starting", f"not yet polling task queue {self.settings.task_queue}")
        return Health("healthy", f"polling {self.settings.task_queue}")
