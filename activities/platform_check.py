"""Activities of the platform check: can the worker reach the ledger database and Vault?"""

from __future__ import annotations

from sqlalchemy import Engine, text
from temporalio import activity

from infra.vault import SecretStore
from models.contracts import CHECK_DATABASE, CHECK_SECRETS, DatabaseCheck, SecretsCheck


class PlatformCheckActivities:
    def __init__(self, engine: Engine, secrets: SecretStore) -> None:
        self._engine = engine
        self._secrets = secrets

    # Sync activities run in the worker's thread pool, off the event loop.
    @activity.defn(name=CHECK_DATABASE)
    def check_database(self) -> DatabaseCheck:
        with self._engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return DatabaseCheck(schema_revision=revision)

    @activity.defn(name=CHECK_SECRETS)
    def check_secrets(self) -> SecretsCheck:
        return SecretsCheck(readable=self._secrets.names())
