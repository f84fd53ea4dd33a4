"""One settings class for every process, read from the environment (prefix ``BFC_``).

Ports and paths have the local stack's defaults; secrets are not here: they come from
Vault, and only the bootstrap credentials that reach Vault itself (an AppRole) may be
given in the environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import AnyHttpUrl, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.risk import RiskPolicy

# Custom search attributes the workflows publish, registered with Temporal at start.
# No PII goes into any of them: ids, codes, amounts and times only.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "PaymentStatus": "Keyword",
    "PaymentKind": "Keyword",
    "CustomerId": "Keyword",
    "AmountMinor": "Int",
    "Currency": "Keyword",
    "RiskScore": "Double",
    "ReviewStatus": "Keyword",
    "ReviewKind": "Keyword",
    "ReviewAssignee": "Keyword",
    "ReviewDueAt": "Datetime",
    "ReviewEscalations": "Int",
    "OnboardingStatus": "Keyword",
    "RiskTier": "Keyword",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BFC_", extra="ignore")

    # Where the local stack keeps binaries it fetched, data, pid files and logs.
    stack_dir: Path = Path(".stack")
    # The address the local stack's servers listen on (loopback only).
    host: str = "127.0.0.1"
    # Where clients find each server; the local stack's address unless deployed elsewhere.
    temporal_host: str = "127.0.0.1"
    postgres_host: str = "127.0.0.1"
    vault_host: str = "127.0.0.1"
    keycloak_host: str = "127.0.0.1"
    api_host: str = "127.0.0.1"

    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    temporal_namespace: str = "default"
    task_queue: str = "bfc-payments"

    postgres_port: int = 5433
    postgres_db: str = "bfc"
    postgres_user: str = "postgres"
    # PostgreSQL refuses to run as root; the launcher then runs it as this system user.
    postgres_os_user: str = "bfc_postgres"

    vault_port: int = 8200
    vault_kv_mount: str = "secret"
    vault_secrets_path: str = "bfc"
    vault_transit_mount: str = "transit"
    vault_transit_key: str = "bfc-platform"
    vault_approle_mount: str = "approle"
    vault_role_id: str | None = None
    vault_secret_id: SecretStr | None = None

    keycloak_version: str = "26.7.3"
    # The distribution's SHA-256 as Maven Central publishes it (the .zip.sha256 beside the
    # zip); a new version needs its own.
    keycloak_sha256: str = "27a6535553c3cdcd083872ba40629efafb3475e3b758e0c6f691395561dd0f1f"
    keycloak_port: int = 8080
    keycloak_management_port: int = 9000
    keycloak_realm: str = "bfc"
    keycloak_audience: str = "bfc-api"
    # Clock skew tolerated on exp/nbf/iat between Keycloak and us.
    keycloak_leeway_seconds: int = 30
    # An unknown key id refetches the realm's keys, but not more often than this: a flood of
    # tokens with made-up key ids must not become a flood of requests to Keycloak.
    keycloak_jwks_refresh_cooldown_seconds: float = 5.0

    api_port: int = 8000
    # Where browsers reach the API, when not at api_url (a TLS proxy in a deployment): the
    # sign-in's callback is built on it, and an https one marks the cookies Secure.
    api_public_url: AnyHttpUrl | None = None
    # The API's CPU priority on a host it shares with the worker and the servers (the local
    # stack): its answers wait for a core first. 0 leaves it; below 0 needs root or
    # CAP_SYS_NICE, and is skipped with a warning without them.
    api_cpu_nice: int = Field(default=-5, ge=-20, le=19)

    # Outgoing mail; locally the stack's SMTP sink (infra/sandbox/smtp_sink.py).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    mail_from: str = "BFC Payments <no-reply@bfc.example>"
    # Reviews about more than this (minor units) need two different officers' approval.
    four_eyes_threshold_minor: int = 1_000_000
    # Who hears about escalated compliance reviews.
    review_supervisors: list[str] = ["compliance-supervisors@dev.bfc.test"]

    # Risk policy (models/risk.py RiskPolicy), in minor units of EUR-like currencies. These
    # are the DEVELOPMENT values: the review threshold is low so the review path is easy to
    # reach, while velocity and daily sums are loose and the model does not decide, because
    # a handful of dev customers carry every test and benchmark payment. Production values:
    # per day 10_000_000, velocity 10 (review) / 30 (decline) per hour, the model deciding.
    risk_per_transaction_limit_minor: int = 5_000_000
    risk_per_day_limit_minor: int = 1_000_000_000
    risk_velocity_review_per_hour: int = 10_000
    risk_velocity_decline_per_hour: int = 100_000
    risk_review_amount_minor: int = 100_000
    risk_new_beneficiary_review_minor: int = 50_000
    risk_model_review_score: float = 0.7
    risk_model_decline_score: float = 0.95
    # Development: the model scores every payment (recorded on it) but decides nothing; the
    # dev users' test bursts look like fraud to it. Production: true.
    risk_model_decides: bool = False

    def risk_policy(self) -> RiskPolicy:
        return RiskPolicy(
            per_transaction_limit_minor=self.risk_per_transaction_limit_minor,
            per_day_limit_minor=self.risk_per_day_limit_minor,
            velocity_review_per_hour=self.risk_velocity_review_per_hour,
            velocity_decline_per_hour=self.risk_velocity_decline_per_hour,
            review_amount_minor=self.risk_review_amount_minor,
            new_beneficiary_review_minor=self.risk_new_beneficiary_review_minor,
            model_review_score=self.risk_model_review_score,
            model_decline_score=self.risk_model_decline_score,
            model_decides=self.risk_model_decides,
        )

    # Fraud model artifacts (infra/fraud_model.py); unset: <stack dir>/models/fraud. The seed
    # is the synthetic training data's, used when a worker finds no model and trains one.
    fraud_model_dir: Path | None = None
    fraud_seed: int = 7

    @property
    def fraud_model_path(self) -> Path:
        if self.fraud_model_dir is not None:
            return self.fraud_model_dir.resolve()
        return self.stack_path / "models" / "fraud"

    # The card gateway (a Stripe-compatible PSP); locally the stack's sandbox
    # (infra/sandbox/card_gateway.py). A real provider is `gateway_base_url` plus the
    # Vault secret gateway.api_key.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8101
    gateway_base_url: str | None = None
    # Read timeout: past it a charge's outcome is unknown and is resolved by lookup.
    gateway_timeout_seconds: float = 5.0
    gateway_connect_timeout_seconds: float = 2.0

    # Webhooks to apps' endpoints (infra/webhooks.py). Plain http:// endpoint URLs are
    # accepted only while this is true: the dev stack's receivers listen on loopback without
    # TLS; set BFC_WEBHOOKS_ALLOW_HTTP=false in production so only https:// registers.
    webhooks_allow_http: bool = True
    # Endpoints on private, loopback or link-local addresses (infra/webhook_destinations.py)
    # are allowed only while this is true, for the same dev receivers; set
    # BFC_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES=false in production, so apps cannot point our
    # signed requests at internal services.
    webhooks_allow_private_addresses: bool = True
    # Per attempt: a receiver slower than this counts as failed and is retried with backoff.
    webhook_timeout_seconds: float = 10.0

    # The KYC (identity verification) provider; locally the stack's sandbox
    # (infra/sandbox/kyc_provider.py). A real provider is `kyc_base_url` plus the Vault
    # secrets kyc.api_key and kyc.webhook_signing_secret.
    kyc_host: str = "127.0.0.1"
    kyc_port: int = 8102
    kyc_base_url: str | None = None
    kyc_timeout_seconds: float = 10.0

    @property
    def kyc_url(self) -> str:
        return self.kyc_base_url or f"http://{self.kyc_host}:{self.kyc_port}"

    # Sanctions/PEP list in OpenSanctions' simplified CSV (infra/sanctions.py); by default
    # the shipped fixture of made-up entries. Point it at a real targets.simple.csv to use one.
    sanctions_list_path: Path = Path(__file__).parent / "sandbox" / "data" / "sanctions.simple.csv"

    @cached_property
    def stack_path(self) -> Path:
        return self.stack_dir.resolve()

    @property
    def temporal_address(self) -> str:
        return f"{self.temporal_host}:{self.temporal_port}"

    @property
    def temporal_ui_url(self) -> str:
        return f"http://{self.temporal_host}:{self.temporal_ui_port}"

    @property
    def database_url(self) -> str:
        return (
            f"postgresql+psycopg://{self.postgres_user}@{self.postgres_host}:"
            f"{self.postgres_port}/{self.postgres_db}"
        )

    @property
    def vault_url(self) -> str:
        return f"http://{self.vault_host}:{self.vault_port}"

    @property
    def keycloak_url(self) -> str:
        return f"http://{self.keycloak_host}:{self.keycloak_port}"

    @property
    def keycloak_issuer(self) -> str:
        return f"{self.keycloak_url}/realms/{self.keycloak_realm}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def api_browser_url(self) -> str:
        """The API as browsers reach it: ``api_public_url`` if set, else ``api_url``."""
        if self.api_public_url is None:
            return self.api_url
        return str(self.api_public_url).rstrip("/")

    @property
    def gateway_url(self) -> str:
        return self.gateway_base_url or f"http://{self.gateway_host}:{self.gateway_port}"


def get_settings() -> Settings:
    """Build settings from the environment; called by entry points, never at import time."""
    return Settings()
