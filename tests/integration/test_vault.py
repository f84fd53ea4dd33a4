"""OpenBao as Vault: seeded secrets and Transit through our adapter, with the app's AppRole."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import hvac
import pytest
from hvac.exceptions import Forbidden, InvalidPath, VaultError
from pydantic import SecretStr

from infra.envelope import EnvelopeCipher, KeyServiceUnavailable
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.stack.vault import APP_POLICY
from infra.vault import (
    MissingSecret,
    SecretStore,
    SecretsUnavailable,
    TransitCipher,
    connect_vault,
)


def test_the_app_reads_seeded_secrets(settings: Settings) -> None:
    store = SecretStore(connect_vault(settings), settings)
    assert store.read("keycloak") == {"client_id": "bfc-app", "client_secret": "dev-bfc-app-secret"}
    gateway_key = store.read("gateway")["api_key"]
    assert len(gateway_key) >= 32  # generated per stack, never a fixed value
    with pytest.raises(MissingSecret, match="bfc/no-such-provider"):
        store.read("no-such-provider")


def test_transit_round_trip_keeps_plaintext_out_of_the_ciphertext(settings: Settings) -> None:
    cipher = TransitCipher(connect_vault(settings), settings)
    plaintext = b"Maria Lindqvist, 1987-04-12"
    ciphertext = cipher.encrypt(plaintext)
    assert ciphertext.startswith("vault:v")
    assert b"Lindqvist" not in ciphertext.encode()
    assert cipher.decrypt(ciphertext) == plaintext


def test_the_app_role_cannot_write_secrets_or_reach_other_paths(settings: Settings) -> None:
    client = connect_vault(settings)
    with pytest.raises(Forbidden):
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{settings.vault_secrets_path}/gateway",
            secret={"api_key": "stolen"},
            mount_point=settings.vault_kv_mount,
        )
    with pytest.raises(Forbidden):
        client.sys.list_mounted_secrets_engines()


def test_missing_or_wrong_bootstrap_credentials_stop_with_a_clear_message(
    settings: Settings,
) -> None:
    with pytest.raises(SecretsUnavailable, match="BFC_VAULT_ROLE_ID"):
        connect_vault(Settings(vault_role_id=None, vault_secret_id=None))
    wrong = settings.model_copy(update={"vault_secret_id": SecretStr("not-the-secret-id")})
    with pytest.raises(SecretsUnavailable, match="login"):
        connect_vault(wrong)


def test_vault_keeps_its_data_on_disk(stack: Stack, settings: Settings) -> None:
    # Dev mode would keep everything in memory and lose the Transit key on restart.
    status = hvac.Client(url=settings.vault_url).sys.read_seal_status()
    assert status["storage_type"] == "raft"
    assert status["sealed"] is False
    assert (stack.vault.home / "raft" / "raft" / "raft.db").exists()


@dataclass
class Role:
    settings: Settings  # the platform's settings, logging in with this role
    name: str
    admin: hvac.Client

    def delete(self) -> None:
        self.admin.auth.approle.delete_role(
            role_name=self.name, mount_point=self.settings.vault_approle_mount
        )


@pytest.fixture
def brief_login(stack: Stack, settings: Settings) -> Iterator[Role]:
    """An AppRole of the platform's policy whose logins live 2 s: the platform's role gives
    an hour, and a process of ours outlives that many times over."""
    root = json.loads(stack.vault.init_file.read_text())["root_token"]
    admin = hvac.Client(url=settings.vault_url, token=root)
    role, mount = f"bfc-brief-{uuid.uuid4().hex[:8]}", settings.vault_approle_mount
    admin.auth.approle.create_or_update_approle(
        role_name=role,
        token_policies=[APP_POLICY],
        token_ttl="2s",
        token_max_ttl="2s",
        mount_point=mount,
    )
    try:
        role_id = admin.auth.approle.read_role_id(role_name=role, mount_point=mount)
        secret_id = admin.auth.approle.generate_secret_id(role_name=role, mount_point=mount)
        login = settings.model_copy(
            update={
                "vault_role_id": role_id["data"]["role_id"],
                "vault_secret_id": SecretStr(secret_id["data"]["secret_id"]),
            }
        )
        yield Role(login, role, admin)
    finally:
        with contextlib.suppress(InvalidPath):  # a test may have deleted it
            admin.auth.approle.delete_role(role_name=role, mount_point=mount)


def test_a_process_outlives_its_vault_token(brief_login: Role) -> None:
    settings = brief_login.settings
    client = connect_vault(settings)
    first_token = client.token
    cipher = EnvelopeCipher(client, settings, key_max_uses=1)  # Vault for every envelope
    opened = cipher.encrypt(b"before")
    time.sleep(3)  # the token has expired: Vault answers it with 403

    assert cipher.decrypt(cipher.encrypt(b"after")) == b"after"
    assert EnvelopeCipher(client, settings).decrypt(opened) == b"before"  # an unwrap
    assert SecretStore(client, settings).read("webhooks")["signing_secret"]
    assert client.token != first_token
    # What the policy refuses stays refused after the new login.
    with pytest.raises(Forbidden):
        client.sys.list_mounted_secrets_engines()


def test_a_refused_login_is_not_taken_for_vault_away(brief_login: Role) -> None:
    # The key in use outlives Vault being away (test_encryption), not Vault saying no: a
    # process whose role was removed fails at each new data key, and keeps asking.
    cipher = EnvelopeCipher(
        connect_vault(brief_login.settings), brief_login.settings, key_max_uses=1
    )
    cipher.encrypt(b"while the role exists")
    brief_login.delete()
    time.sleep(3)  # the token has expired, and logging in again is refused
    for _ in range(2):
        with pytest.raises(VaultError) as refused:
            cipher.encrypt(b"after the role is gone")
        assert not isinstance(refused.value, KeyServiceUnavailable)
