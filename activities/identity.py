"""Identity activities: the onboarding saga creates, enables and disables platform users.

Each is idempotent (see ``infra.identity``) and writes what it did to the audit log.
"""

from __future__ import annotations

from sqlalchemy import Engine
from temporalio import activity

from infra.audit import write_audit_event
from infra.identity import IdentityDirectory
from models.contracts import (
    ASSIGN_REALM_ROLE,
    CREATE_USER,
    DISABLE_USER,
    ENABLE_USER,
    CreateUserInput,
    IdentityUser,
    UserChangeInput,
)


class IdentityActivities:
    def __init__(self, directory: IdentityDirectory, engine: Engine) -> None:
        self._directory = directory
        self._engine = engine

    def _audit(self, actor: str, action: str, user: IdentityUser, **details: object) -> None:
        write_audit_event(
            self._engine,
            actor=actor,
            action=action,
            subject=f"user:{user.id}",
            details={"enabled": user.enabled, "roles": user.realm_roles, **details},
        )

    @activity.defn(name=CREATE_USER)
    def create_user(self, request: CreateUserInput) -> IdentityUser:
        user = self._directory.create_disabled_user(
            username=request.username,
            email=request.email,
            first_name=request.first_name,
            last_name=request.last_name,
        )
        self._audit(request.requested_by, "identity.user_created", user)
        return user

    @activity.defn(name=ENABLE_USER)
    def enable_user(self, request: UserChangeInput) -> IdentityUser:
        user = self._directory.set_enabled(request.user_id, enabled=True)
        self._audit(request.requested_by, "identity.user_enabled", user)
        return user

    @activity.defn(name=DISABLE_USER)
    def disable_user(self, request: UserChangeInput) -> IdentityUser:
        user = self._directory.set_enabled(request.user_id, enabled=False)
        self._audit(request.requested_by, "identity.user_disabled", user)
        return user

    @activity.defn(name=ASSIGN_REALM_ROLE)
    def assign_realm_role(self, request: UserChangeInput) -> IdentityUser:
        if request.role is None:
            raise ValueError("assign_realm_role needs a role")
        user = self._directory.assign_realm_role(request.user_id, request.role)
        self._audit(request.requested_by, "identity.role_assigned", user, role=request.role)
        return user
