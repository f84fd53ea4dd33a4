"""Which errors the Vault setup waits out on a fresh server, and which stop it."""

from __future__ import annotations

import pytest
import requests
from hvac.exceptions import Forbidden, InternalServerError, InvalidPath, InvalidRequest, VaultDown

from infra.stack.vault import KV_UPGRADING, is_passing_setup_error

UPGRADING = (
    f"{KV_UPGRADING}. This backend will be unavailable for a brief period and will resume "
    "service shortly., on get http://127.0.0.1:8200/v1/secret/data/bfc/gateway"
)


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest(UPGRADING),  # the KV mount right after it is enabled
        InternalServerError("local node not active but active cluster node not found"),
        VaultDown("Vault is sealed"),
        requests.ConnectionError("connection refused"),
    ],
    ids=["kv-upgrading", "not-leader-yet", "sealed", "not-answering"],
)
def test_a_settling_server_is_waited_for(error: Exception) -> None:
    assert is_passing_setup_error(error)


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("invalid key_type"),
        Forbidden("permission denied"),
        InvalidPath("no handler for route"),
    ],
    ids=["bad-request", "forbidden", "bad-path"],
)
def test_a_mistake_in_the_setup_stops_it_at_once(error: Exception) -> None:
    assert not is_passing_setup_error(error)
