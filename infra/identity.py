"""The realm's users, managed through Keycloak's admin API with the bfc-app service account.

Every operation is idempotent, so the activities that call it can be retried freely:
creating a user that exists returns it, enabling an enabled user changes nothing, assigning
a role the user has is a no-op.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakGetError

from infra.settings import Settings
from models.contracts import IdentityUser

# Roles the platform's own processes may hand out. admin and operator are granted by people.
ASSIGNABLE_ROLES = frozenset({"customer"})


class UnknownUser(LookupError):
    pass


class IdentityDirectory:
    def __init__(self, admin: KeycloakAdmin) -> None:
        self._admin = admin

    @classmethod
    def connect(
        cls, settings: Settings, *, client_id: str, client_secret: str
    ) -> IdentityDirectory:
        connection = KeycloakOpenIDConnection(
            server_url=settings.keycloak_url,
            realm_name=settings.keycloak_realm,
            client_id=client_id,
            client_secret_key=client_secret,
            timeout=10,
        )
        return cls(KeycloakAdmin(connection=connection))

    def _user(self, representation: dict[str, Any]) -> IdentityUser:
        user_id = representation["id"]
        roles = sorted(r["name"] for r in self._admin.get_realm_roles_of_user(user_id))
        return IdentityUser(
            id=user_id,
            username=representation["username"],
            email=representation.get("email"),
            enabled=bool(representation.get("enabled")),
            realm_roles=roles,
        )

    def _representation(self, user_id: str) -> dict[str, Any]:
        """Keycloak's record of the user; ``UnknownUser`` only when Keycloak says there is
        none (404). Any other failure (Keycloak unreachable, a 5xx) propagates, so callers
        retry it."""
        try:
            representation: dict[str, Any] = self._admin.get_user(user_id)
        except KeycloakGetError as exc:
            if exc.response_code == 404:
                raise UnknownUser(user_id) from exc
            raise
        return representation

    def get(self, user_id: str) -> IdentityUser:
        """The user with their realm roles (a second request)."""
        return self._user(self._representation(user_id))

    def holds_role(self, user_id: str, role: str) -> bool:
        """Whether the user holds ``role`` in effect (directly or through a composite role);
        False for a user Keycloak does not know. Other failures propagate."""
        try:
            roles = self._admin.get_composite_realm_roles_of_user(user_id)
        except KeycloakGetError as exc:
            if exc.response_code == 404:
                return False
            raise
        return any(r["name"] == role for r in roles)

    def mail_address(self, user_id: str) -> str | None:
        """The user's address, None when there is none; one request, no roles."""
        email = self._representation(user_id).get("email")
        return str(email) if email else None

    def find(self, *, username: str | None = None, email: str | None = None) -> IdentityUser | None:
        query: dict[str, Any] = {"exact": True}
        if username is not None:
            query["username"] = username
        if email is not None:
            query["email"] = email
        matches = self._admin.get_users(query)
        return self._user(matches[0]) if matches else None

    def create_disabled_user(
        self, *, username: str, email: str, first_name: str, last_name: str
    ) -> IdentityUser:
        """Create the user, disabled: they can log in only once they are approved."""
        existing = self.find(username=username)
        if existing is not None:
            return existing
        user_id = self._admin.create_user(
            {
                "username": username,
                "email": email,
                "firstName": first_name,
                "lastName": last_name,
                "enabled": False,
                "emailVerified": False,
            },
            exist_ok=True,
        )
        return self.get(user_id)

    def set_enabled(self, user_id: str, *, enabled: bool) -> IdentityUser:
        self._admin.update_user(user_id, {"enabled": enabled})
        return self.get(user_id)

    def assign_realm_role(self, user_id: str, role: str) -> IdentityUser:
        if role not in ASSIGNABLE_ROLES:
            raise PermissionError(f"the platform does not grant the role {role!r}")
        user = self.get(user_id)
        if role not in user.realm_roles:
            self._admin.assign_realm_roles(user_id, [self._admin.get_realm_role(role)])
            user = self.get(user_id)
        return user

    def send_set_password_email(self, user_id: str, *, lifespan_seconds: int | None = None) -> None:
        """Have Keycloak mail the user a link to set their password (required action
        UPDATE_PASSWORD). Keycloak refuses a disabled user or one without an email address;
        the realm's SMTP settings say where the mail goes. ``lifespan_seconds`` None keeps
        the realm's lifespan for such links."""
        self._admin.send_update_account(
            user_id=user_id, payload=["UPDATE_PASSWORD"], lifespan=lifespan_seconds
        )

    def delete_user(self, user_id: str) -> None:
        """For tests and data-protection erasure only."""
        self._admin.delete_user(user_id)


class MailAddresses:
    """Customers' mail addresses for notifications, each remembered for ``ttl`` seconds.

    Every payment mails its customer; asking Keycloak for the address each time cost the
    identity server more CPU than the rest of the payment's steps together. A changed
    address is used at most ``ttl`` later, an unknown customer (``None``) is remembered as
    such for as long. Failures other than "no such user" are not remembered: the caller
    retries them. Kept in this process only; at most ``size`` addresses, the oldest go
    first. Thread-safe (sync activities run in an executor).
    """

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        *,
        ttl: float = 300.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def get(self, customer_id: str) -> str | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(customer_id)
            if entry is not None and now < entry[0]:
                return entry[1]
        try:
            address = self._lookup(customer_id)
        except UnknownUser:
            address = None
        with self._lock:
            self._entries[customer_id] = (now + self._ttl, address)
            self._entries.move_to_end(customer_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return address
