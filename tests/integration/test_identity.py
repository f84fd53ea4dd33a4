"""Provisioning platform users in the real realm, with the bfc-app service account."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.testing import ActivityEnvironment

from activities.identity import IdentityActivities
from infra.audit import list_audit_events
from infra.identity import IdentityDirectory
from infra.settings import Settings
from infra.vault import SecretStore, connect_vault
from models.contracts import CreateUserInput, UserChangeInput


@pytest.fixture
def directory(settings: Settings) -> IdentityDirectory:
    creds = SecretStore(connect_vault(settings), settings).read("keycloak")
    return IdentityDirectory.connect(
        settings, client_id=creds["client_id"], client_secret=creds["client_secret"]
    )


@pytest.fixture
def new_username(directory: IdentityDirectory) -> Iterator[str]:
    username = f"test-{uuid.uuid4().hex[:10]}"
    yield username
    user = directory.find(username=username)
    if user is not None:
        directory.delete_user(user.id)


def test_provisioning_is_idempotent_and_audited(
    directory: IdentityDirectory, engine: Engine, new_username: str
) -> None:
    activities = IdentityActivities(directory, engine)
    env = ActivityEnvironment()
    request = CreateUserInput(
        username=new_username,
        email=f"{new_username}@dev.bfc.test",
        first_name="Maria",
        last_name="Lindqvist",
        requested_by="onb_test",
    )
    created = env.run(activities.create_user, request)
    again = env.run(activities.create_user, request)  # a retried activity
    assert again.id == created.id
    assert created.enabled is False  # nobody logs in before approval

    change = UserChangeInput(user_id=created.id, requested_by="onb_test", role="customer")
    for _ in range(2):
        user = env.run(activities.assign_realm_role, change)
    assert "customer" in user.realm_roles
    assert env.run(activities.enable_user, change).enabled is True
    assert env.run(activities.enable_user, change).enabled is True
    assert env.run(activities.disable_user, change).enabled is False

    by_email = directory.find(email=request.email)
    assert by_email is not None and by_email.id == created.id
    with Session(engine) as session:
        actions = [e.action for e in list_audit_events(session, subject=f"user:{created.id}")]
    assert actions == [
        "identity.user_created",
        "identity.user_created",
        "identity.role_assigned",
        "identity.role_assigned",
        "identity.user_enabled",
        "identity.user_enabled",
        "identity.user_disabled",
    ]


def test_the_platform_does_not_hand_out_staff_roles(
    directory: IdentityDirectory, new_username: str
) -> None:
    user = directory.create_disabled_user(
        username=new_username, email=f"{new_username}@dev.bfc.test", first_name="E", last_name="Ve"
    )
    with pytest.raises(PermissionError):
        directory.assign_realm_role(user.id, "admin")
    assert "admin" not in directory.get(user.id).realm_roles
