"""Vault (OpenBao locally) for processes of the platform: secrets from KV v2, Transit.

Processes log in with an AppRole (role id + secret id are the only bootstrap credentials
that may come from the environment). A secret the platform needs and cannot read stops
the process at start with one line that names it.

The AppRole's tokens live an hour (``token_ttl``); our processes run for days. Vault
answers an expired token with 403, so the client logs in again on a 403 and repeats the
request once (``LoginKeeper``); a path the policy refuses is still refused after that.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import hvac
import requests
from hvac.adapters import JSONAdapter
from hvac.exceptions import Forbidden, InvalidPath, VaultError

from infra.settings import Settings


class SecretsUnavailable(RuntimeError):
    """Vault cannot be reached or refuses us; the message names what and where."""


class MissingSecret(SecretsUnavailable):
    pass


class LoginKeeper(JSONAdapter):  # type: ignore[misc] # hvac ships no type hints
    """hvac's JSON adapter that logs in again when Vault refuses the token (403) and repeats
    the request once. Threads that meet the same expired token log in once between them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relogin: Callable[[], object] | None = None
        self._login_lock = threading.Lock()
        self._logging_in = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        token = self.token
        try:
            return super().request(*args, **kwargs)
        except Forbidden:
            if self.relogin is None or getattr(self._logging_in, "active", False):
                raise  # no way to log in, or the login itself was refused
        with self._login_lock:
            if self.token == token:  # nobody logged in since this request was sent
                self._logging_in.active = True
                try:
                    self.relogin()
                finally:
                    self._logging_in.active = False
        return super().request(*args, **kwargs)


def connect_vault(settings: Settings) -> hvac.Client:
    if settings.vault_role_id is None or settings.vault_secret_id is None:
        raise SecretsUnavailable(
            "BFC_VAULT_ROLE_ID and BFC_VAULT_SECRET_ID are not set (the stack writes them to "
            ".stack/vault/approle.json)"
        )
    role_id, secret_id = settings.vault_role_id, settings.vault_secret_id

    def login() -> object:
        return client.auth.approle.login(
            role_id=role_id,
            secret_id=secret_id.get_secret_value(),
            mount_point=settings.vault_approle_mount,
        )

    client = hvac.Client(url=settings.vault_url, timeout=5, adapter=LoginKeeper)
    try:
        login()
    except (VaultError, requests.RequestException) as exc:
        raise SecretsUnavailable(f"vault login at {settings.vault_url} failed: {exc}") from exc
    client.adapter.relogin = login
    return client


class SecretStore:
    """Provider credentials and signing secrets under ``<kv mount>/<secrets path>/<name>``."""

    def __init__(self, client: hvac.Client, settings: Settings) -> None:
        self._client = client
        self._mount = settings.vault_kv_mount
        self._base = settings.vault_secrets_path

    def path_of(self, name: str) -> str:
        return f"{self._mount}/{self._base}/{name}"

    def read(self, name: str) -> dict[str, str]:
        path = f"{self._base}/{name}"
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self._mount, raise_on_deleted_version=True
            )
        except (InvalidPath, Forbidden) as exc:
            raise MissingSecret(f"secret {self._mount}/{path} is missing or not readable") from exc
        data: dict[str, str] = response["data"]["data"]
        return data

    def names(self) -> list[str]:
        response = self._client.secrets.kv.v2.list_secrets(path=self._base, mount_point=self._mount)
        return sorted(response["data"]["keys"])


class TransitCipher:
    """Encrypt/decrypt with the platform's Transit key; the key never leaves Vault."""

    def __init__(self, client: hvac.Client, settings: Settings) -> None:
        self._client = client
        self._mount = settings.vault_transit_mount
        self._key = settings.vault_transit_key

    def encrypt(self, plaintext: bytes) -> str:
        response = self._client.secrets.transit.encrypt_data(
            name=self._key,
            plaintext=base64.b64encode(plaintext).decode(),
            mount_point=self._mount,
        )
        ciphertext: str = response["data"]["ciphertext"]
        return ciphertext

    def decrypt(self, ciphertext: str) -> bytes:
        response = self._client.secrets.transit.decrypt_data(
            name=self._key, ciphertext=ciphertext, mount_point=self._mount
        )
        return base64.b64decode(response["data"]["plaintext"])


# What the platform's processes need from Vault before they serve anything.
REQUIRED_SECRETS: dict[str, tuple[str, ...]] = {
    "gateway": ("api_key",),
    "kyc": ("api_key", "webhook_signing_secret"),
    "webhooks": ("signing_secret",),
    "smtp": ("username", "password"),
    "keycloak": ("client_id", "client_secret"),
    "api": ("session_signing_key",),
}


def load_platform_secrets(store: SecretStore) -> dict[str, dict[str, str]]:
    """Read every secret the platform needs; the first one missing stops the start."""
    loaded: dict[str, dict[str, str]] = {}
    for name, fields in REQUIRED_SECRETS.items():
        data = store.read(name)
        missing = [field for field in fields if not data.get(field)]
        if missing:
            raise MissingSecret(f"secret {store.path_of(name)} lacks {', '.join(missing)}")
        loaded[name] = data
    return loaded
