"""Inputs and results of workflows and activities: frozen dataclasses, one in and one out.

Activity names live here too, so workflows schedule activities by name without importing
their implementations (which pull in the database and HTTP clients).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# -- platform check: a round trip through Temporal, the worker, PostgreSQL and Vault --------
PLATFORM_CHECK_WORKFLOW = "PlatformCheckWorkflow"
CHECK_DATABASE = "check_database"
CHECK_SECRETS = "check_secrets"


@dataclass(frozen=True)
class PlatformCheckInput:
    requested_by: str


@dataclass(frozen=True)
class DatabaseCheck:
    schema_revision: str | None


@dataclass(frozen=True)
class SecretsCheck:
    # Names only: a check never carries a secret's value.
    readable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlatformCheckResult:
    requested_by: str
    checked_at: datetime
    schema_revision: str | None
    secrets_readable: list[str]


# -- ledger maintenance ----------------------------------------------------------------------
LEDGER_ROLL_UP_WORKFLOW = "LedgerRollUpWorkflow"
LEDGER_ROLL_UP_SCHEDULE = "ledger-roll-up"
ROLL_UP_BALANCES = "roll_up_balances"
RELEASE_EXPIRED_HOLDS = "release_expired_holds"


@dataclass(frozen=True)
class RollUpResult:
    # How many deferred balance movements were folded into their accounts.
    movements: int
    # How many expired holds were voided (``<hold id>:expired``); 0 in runs from before
    # the roll-up released them.
    released_holds: int = 0


@dataclass(frozen=True)
class ReleasedHolds:
    # How many expired holds this run voided.
    holds: int


# -- identity (Keycloak users of the platform) -------------------------------------------
CREATE_USER = "create_user"
ENABLE_USER = "enable_user"
DISABLE_USER = "disable_user"
ASSIGN_REALM_ROLE = "assign_realm_role"


@dataclass(frozen=True)
class CreateUserInput:
    username: str
    email: str
    first_name: str
    last_name: str
    requested_by: str  # subject id of the person or workflow asking, for the audit log


@dataclass(frozen=True)
class UserChangeInput:
    user_id: str
    requested_by: str
    role: str | None = None  # for assign_realm_role


@dataclass(frozen=True)
class IdentityUser:
    id: str
    username: str
    email: str | None
    enabled: bool
    realm_roles: list[str] = field(default_factory=list)


# -- customers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Address:
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str | None = None


@dataclass(frozen=True)
class PersonalData:
    """Everything that identifies a person; stored only encrypted (infra.customer_store)."""

    given_name: str
    family_name: str
    date_of_birth: str  # ISO 8601 date
    email: str
    phone: str
    address: Address
    document_type: str
    document_number: str
