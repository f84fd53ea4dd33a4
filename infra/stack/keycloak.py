"""Keycloak: the official server distribution from Maven Central, run on the machine's JDK.

First start: ``mvn dependency:copy`` fetches ``org.keycloak:keycloak-quarkus-dist`` (zip)
into ``.stack/cache``; its SHA-256 must be the pinned ``keycloak_sha256`` (Maven only warns
on a checksum it cannot match, and the zip runs as our identity provider), then it is
unpacked under ``.stack/keycloak/`` and ``kc.sh build`` bakes
the build-time options in once; every start after that is ``kc.sh start --optimized``,
which skips the Quarkus augmentation (about 20 s here). The realm ``bfc`` is imported from
``infra/deploy/keycloak/`` at start when it does not exist yet (Keycloak's own
import-if-absent); its users, roles and sessions persist in the dev-file database.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import httpx

from infra.stack.base import Health, Service, StackError
from infra.stack.process import ProcessRecord

REALM_DIR = Path(__file__).resolve().parent.parent / "deploy" / "keycloak"
BUILD_OPTIONS = ["--db=dev-file", "--health-enabled=true"]
DEV_ADMIN = ("admin", "dev-admin")  # master-realm console login, development only


def verify_archive(archive: Path, sha256: str) -> None:
    """Refuse (and delete, so the next start fetches it again) an archive whose SHA-256 is
    not the pinned one: a corrupt download, or not the distribution we reviewed."""
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        archive.unlink()
        raise StackError(
            f"keycloak: {archive.name} has SHA-256 {digest.hexdigest()}, not the pinned "
            f"{sha256}; it was deleted. For another version set BFC_KEYCLOAK_SHA256 to the "
            "digest Maven Central publishes beside the zip"
        )


class KeycloakService(Service):
    name = "keycloak"
    start_timeout = 180.0

    def ports(self) -> tuple[int, ...]:
        return (self.settings.keycloak_port, self.settings.keycloak_management_port)

    @property
    def dist_dir(self) -> Path:
        return self.home / f"keycloak-{self.settings.keycloak_version}"

    @property
    def kc_sh(self) -> Path:
        return self.dist_dir / "bin" / "kc.sh"

    def install(self) -> None:
        for tool in ("java", "mvn"):
            if shutil.which(tool) is None:
                raise StackError(
                    f"keycloak needs '{tool}' on PATH (Java 17+ and Maven); install it and retry"
                )
        if not self.kc_sh.exists():
            self._fetch_and_unpack()
        self._build_once()
        imports = self.dist_dir / "data" / "import"
        imports.mkdir(parents=True, exist_ok=True)
        for realm_file in REALM_DIR.glob("*-realm.json"):
            shutil.copyfile(realm_file, imports / realm_file.name)

    def _fetch_and_unpack(self) -> None:
        version = self.settings.keycloak_version
        cache = self.settings.stack_path / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        archive = cache / f"keycloak-quarkus-dist-{version}.zip"
        if not archive.exists():
            self._run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "dependency:copy",
                    f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:zip",
                    f"-DoutputDirectory={cache}",
                ],
                what=f"fetching Keycloak {version} from Maven Central",
            )
        verify_archive(archive, self.settings.keycloak_sha256)
        self.home.mkdir(parents=True, exist_ok=True)
        partial = self.home / f".unpacking-{version}"
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(partial)
        # zipfile drops the execute bits; the launch scripts need them.
        for script in (partial / f"keycloak-{version}" / "bin").glob("*.sh"):
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        (partial / f"keycloak-{version}").rename(self.dist_dir)
        partial.rmdir()

    def _build_once(self) -> None:
        stamp = self.dist_dir / "bfc-build-options"
        wanted = " ".join(BUILD_OPTIONS)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        self._run([str(self.kc_sh), "build", *BUILD_OPTIONS], what="kc.sh build")
        stamp.write_text(wanted)

    def _run(self, argv: list[str], *, what: str) -> None:
        log = self.table.log_path(self.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise StackError(f"keycloak: {what} failed (exit {done.returncode}); see {log}")

    def launch(self) -> ProcessRecord:
        s = self.settings
        argv = [
            str(self.kc_sh),
            "start",
            "--optimized",
            "--http-enabled=true",
            f"--http-host={s.host}",
            f"--http-port={s.keycloak_port}",
            f"--http-management-port={s.keycloak_management_port}",
            # A fixed hostname fixes the token issuer, however the server is reached.
            f"--hostname={s.keycloak_url}",
            # The default cache clusters over JGroups, which listens on every interface
            # (port 7800 and a failure-detection port); one node on loopback needs none.
            # A start option: set at build time only, it does not reach the server.
            "--cache=local",
            "--import-realm",
        ]
        env = dict(os.environ)
        env["KC_BOOTSTRAP_ADMIN_USERNAME"], env["KC_BOOTSTRAP_ADMIN_PASSWORD"] = DEV_ADMIN
        # Its database holds the realm's signing keys, client secrets and password hashes:
        # for this user alone (files made from now on, and the folder of those made before).
        data = self.dist_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        return self.table.start(self.name, argv, env=env, cwd=self.dist_dir, umask=0o077)

    def probe(self) -> Health:
        s = self.settings
        try:
            ready = httpx.get(
                f"http://{s.host}:{s.keycloak_management_port}/health/ready", timeout=2
            )
            if ready.status_code != 200:
                return Health("starting", f"health/ready: {ready.status_code}")
            realm = httpx.get(f"{s.keycloak_issuer}/.well-known/openid-configuration", timeout=3)
        except httpx.HTTPError as exc:
            return Health("starting", str(exc))
        if realm.status_code != 200:
            return Health("unhealthy", f"realm {s.keycloak_realm}: {realm.status_code}")
        return Health("healthy", s.keycloak_issuer)

    def configure(self) -> None:
        """Give an existing realm the mail settings of the realm file.

        Keycloak imports a realm file only when the realm does not exist yet, so a realm
        created before ``smtpServer`` was in the file would never mail anything (the
        set-password links of onboarding). Checked at every ``up``; written only when it
        differs, with the master realm's development admin.
        """
        s = self.settings
        realm_file = REALM_DIR / f"{s.keycloak_realm}-realm.json"
        if not realm_file.exists():
            return
        wanted = json.loads(realm_file.read_text()).get("smtpServer")
        if not wanted:
            return
        admin = f"{s.keycloak_url}/admin/realms/{s.keycloak_realm}"
        try:
            token = httpx.post(
                f"{s.keycloak_url}/realms/master/protocol/openid-connect/token",
                data={"client_id": "admin-cli", "grant_type": "password",
                      "username": DEV_ADMIN[0], "password": DEV_ADMIN[1]},
                timeout=10,
            )  # fmt: skip
            token.raise_for_status()
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            realm = httpx.get(admin, headers=headers, timeout=10)
            realm.raise_for_status()
            current = realm.json().get("smtpServer") or {}
            if all(current.get(k) == v for k, v in wanted.items()):
                return
            httpx.put(
                admin, headers=headers, json={"smtpServer": wanted}, timeout=10
            ).raise_for_status()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise StackError(f"keycloak: could not set the realm's SMTP server: {exc}") from exc

    def urls(self) -> dict[str, str]:
        s = self.settings
        return {
            "Keycloak admin console": (
                f"{s.keycloak_url}/admin/ (master realm: {DEV_ADMIN[0]} / {DEV_ADMIN[1]})"
            ),
            "Keycloak realm (issuer)": s.keycloak_issuer,
        }
