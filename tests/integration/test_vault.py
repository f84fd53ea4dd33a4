"""OpenBao as Vault: seeded secrets and Transit through our adapter, with the app's AppRole."""

from __future__ import annotations

import hvac
import pytest
from hvac.exceptions import Forbidden
from pydantic import SecretStr

from infra.settings import Settings
from infra.stack.launcher import Stack
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
