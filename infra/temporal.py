"""The Temporal client every process uses."""

from __future__ import annotations

from temporalio.client import Client

from infra.settings import Settings


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
