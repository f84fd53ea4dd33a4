"""Our own processes: the API (uvicorn) and a Temporal worker.

They are started after the servers they need and get the AppRole credentials for Vault in
their environment; everything else they read from settings.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

import httpx

from infra.stack.base import Health, Service, StackError, temporal_cli
from infra.stack.process import ProcessRecord, set_cpu_nice

log = logging.getLogger("bfc.stack")


class AppService(Service):
    """A Python process of ours; ``extra_env`` carries what the launcher hands it."""

    extra_env: dict[str, str]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(getattr(self, "extra_env", {}))
        env["BFC_STACK_DIR"] = str(self.settings.stack_path)
        # Bytecode, kept under the stack directory rather than beside the sources. The
        # workflow sandbox imports each workflow module afresh for every run; without a
        # cached .pyc that import compiled the source each time, a sixth of the worker's
        # CPU under load. Some shells export PYTHONDONTWRITEBYTECODE; it is dropped here.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.settings.stack_path / "cache" / "pycache")
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
            # Named, not "auto": a missing package fails the start instead of slowing it.
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
        record = self.table.start(self.name, argv, env=self.env())
        if s.api_cpu_nice:
            # On two shared cores the answer to POST /v1/payments waited for a core behind
            # the worker and Temporal: first in line, its p99 at 35/s fell from 74-81 ms
            # to 26-40 ms with no fewer payments done (README, Benchmark).
            refused = set_cpu_nice(record.pid, s.api_cpu_nice)
            if refused is not None:
                log.warning("api: CPU priority %s not set (%s)", s.api_cpu_nice, refused)
        return record

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


class SandboxService(AppService):
    """An outside party (card gateway, KYC provider) played by a sandbox server of ours.

    It is started like our apps because its keys are the platform's Vault secrets; the
    outside party itself gets only those values in its environment, never our Vault login.
    """

    module: str  # python -m <module>
    label: str  # how ``bfc up`` lists it

    @property
    def host(self) -> str:
        raise NotImplementedError

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def local_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def read_secret(self, name: str, fields: tuple[str, ...]) -> dict[str, str]:
        from hvac.exceptions import VaultError
        from pydantic import SecretStr
        from requests import RequestException

        from infra.vault import SecretStore, SecretsUnavailable, connect_vault

        creds = getattr(self, "extra_env", {})
        secret_id = creds.get("BFC_VAULT_SECRET_ID")
        settings = self.settings.model_copy(
            update={
                "vault_role_id": creds.get("BFC_VAULT_ROLE_ID"),
                "vault_secret_id": None if secret_id is None else SecretStr(secret_id),
            }
        )
        try:
            data = SecretStore(connect_vault(settings), settings).read(name)
        except (SecretsUnavailable, VaultError, RequestException) as exc:
            raise StackError(f"{self.name}: cannot read its secrets from Vault: {exc}") from exc
        missing = [f for f in fields if not data.get(f)]
        if missing:
            raise StackError(f"{self.name}: the Vault secret {name} lacks {', '.join(missing)}")
        return data

    def sandbox_env(self) -> dict[str, str]:
        raise NotImplementedError

    def launch(self) -> ProcessRecord:
        vault_login = ("BFC_VAULT_ROLE_ID", "BFC_VAULT_SECRET_ID")
        env = {k: v for k, v in self.env().items() if k not in vault_login}
        env.update(self.sandbox_env())
        return self.table.start(self.name, [sys.executable, "-m", self.module], env=env)

    def probe(self) -> Health:
        try:
            response = httpx.get(f"{self.local_url}/healthz", timeout=2)
        except httpx.HTTPError as exc:
            return Health("starting", str(exc))
        if response.status_code != 200:
            return Health("unhealthy", f"/healthz answered {response.status_code}")
        return Health("healthy", f"{self.local_url} -> {self.home}")

    def urls(self) -> dict[str, str]:
        return {self.label: self.local_url}


class CardGatewayService(SandboxService):
    """The card gateway (an outside PSP); its key is the Vault secret ``gateway.api_key``."""

    name = "gateway"
    module = "infra.sandbox.card_gateway"
    label = "Card gateway (sandbox)"

    @property
    def port(self) -> int:
        return self.settings.gateway_port

    @property
    def host(self) -> str:
        return self.settings.gateway_host

    def sandbox_env(self) -> dict[str, str]:
        return {
            "BFC_GATEWAY_API_KEY": self.read_secret("gateway", ("api_key",))["api_key"],
            "BFC_GATEWAY_HOST": self.settings.host,
            "BFC_GATEWAY_PORT": str(self.port),
            "BFC_GATEWAY_HOME": str(self.home),
        }


class KycProviderService(SandboxService):
    """The KYC provider (an outside identity-verification service): its API key and callback
    signing secret are ``kyc.api_key`` and ``kyc.webhook_signing_secret``. It calls back the
    API's webhook by default."""

    name = "kyc"
    module = "infra.sandbox.kyc_provider"
    label = "KYC provider (sandbox)"

    @property
    def port(self) -> int:
        return self.settings.kyc_port

    @property
    def host(self) -> str:
        return self.settings.kyc_host

    def sandbox_env(self) -> dict[str, str]:
        secrets = self.read_secret("kyc", ("api_key", "webhook_signing_secret"))
        return {
            "BFC_KYC_API_KEY": secrets["api_key"],
            "BFC_KYC_WEBHOOK_SECRET": secrets["webhook_signing_secret"],
            "BFC_KYC_HOST": self.settings.host,
            "BFC_KYC_PORT": str(self.port),
            "BFC_KYC_HOME": str(self.home),
            "BFC_KYC_CALLBACK_URL": f"{self.settings.api_url}/v1/kyc/callbacks",
        }


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
