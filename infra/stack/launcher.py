"""Starts, stops and reports on the whole local stack, in dependency order.

Servers are launched together (Keycloak's JVM takes longest, so it starts first), then
waited for one by one; our own processes start once the servers they need answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from infra.settings import Settings
from infra.stack.apps import (
    ApiService,
    AppService,
    CardGatewayService,
    KycProviderService,
    SmtpSinkService,
    WorkerService,
)
from infra.stack.base import Health, Service, StackError
from infra.stack.keycloak import KeycloakService
from infra.stack.postgres import PostgresService
from infra.stack.process import ProcessTable
from infra.stack.temporal import TemporalService
from infra.stack.vault import VaultService

log = logging.getLogger("bfc.stack")

SERVERS = ("keycloak", "temporal", "postgres", "vault", "smtp")  # launch order: slowest first
APPS = ("gateway", "kyc", "api", "worker")  # gateway, kyc: their keys come from Vault
ALL = SERVERS + APPS
# What the apps need before they start; Keycloak is only needed once a request comes in.
APP_DEPENDENCIES = ("postgres", "vault", "temporal")


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = ProcessTable(settings.stack_path)
        self.vault = VaultService(settings, self.table)
        self.smtp = SmtpSinkService(settings, self.table)
        self.apps: dict[str, AppService] = {
            "gateway": CardGatewayService(settings, self.table),
            "kyc": KycProviderService(settings, self.table),
            "api": ApiService(settings, self.table),
            "worker": WorkerService(settings, self.table),
        }
        self.services: dict[str, Service] = {
            "keycloak": KeycloakService(settings, self.table),
            "temporal": TemporalService(settings, self.table),
            "postgres": PostgresService(settings, self.table),
            "vault": self.vault,
            "smtp": self.smtp,
            **self.apps,
        }

    def _select(self, names: tuple[str, ...]) -> list[str]:
        if not names:
            return list(ALL)
        unknown = set(names) - set(ALL)
        if unknown:
            raise StackError(
                f"unknown service(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL)}"
            )
        return [n for n in ALL if n in names]

    def up(self, names: tuple[str, ...] = ()) -> UpReport:
        """Start what is not running and wait until all of it is ready. If anything fails
        (a port taken, a service that never gets ready, an interrupt), what this call
        started is stopped again before the error goes on: no half stack is left behind."""
        t0 = time.monotonic()
        selected = self._select(names)
        report = UpReport()
        servers = [n for n in selected if n in SERVERS]
        apps = [n for n in selected if n in APPS]
        try:
            for name in servers:
                self._start(name, report)
            waits_first = [n for n in APP_DEPENDENCIES if n in servers]
            for name in waits_first:
                self._wait(name)
            for name in apps:
                self.apps[name].extra_env = self.vault.app_credentials()
                self._start(name, report)
            for name in [n for n in servers if n not in waits_first] + apps:
                self._wait(name)
        except BaseException:
            if report.started:
                log.warning("start failed: stopping what it started (%s)", report.started)
                self.down(tuple(report.started))
            raise
        report.seconds = time.monotonic() - t0
        return report

    def _wait(self, name: str) -> None:
        log.info("waiting for %s", name)
        self.services[name].wait_ready()
        # Ready, so whatever it runs as children has started: record them with it.
        self.services[name].table.adopt_children(name)

    def _start(self, name: str, report: UpReport) -> None:
        if self.services[name].start():
            log.info("started %s", name)
            report.started.append(name)
        else:
            report.already_running.append(name)

    def down(self, names: tuple[str, ...] = ()) -> list[str]:
        """Stop our processes, apps first (they hold connections to the servers)."""
        stopped = []
        for name in reversed(self._select(names)):
            if self.services[name].stop():
                log.info("stopped %s", name)
                stopped.append(name)
        return stopped

    def status(self) -> dict[str, Health]:
        return {name: service.status() for name, service in self.services.items()}

    def pid(self, name: str) -> int | None:
        record = self.services[name].running()
        return None if record is None else record.pid

    def urls(self) -> dict[str, str]:
        urls: dict[str, str] = {}
        for service in self.services.values():
            urls.update(service.urls())
        return urls
