"""Stopping one of the stack's services for the length of a block, in fault tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from infra.stack.launcher import Stack


@contextlib.asynccontextmanager
async def stopped(stack: Stack, name: str) -> AsyncIterator[None]:
    """``name`` stopped for the block and started again however the block ends: a failed
    check must not leave the rest of the session without it."""
    await asyncio.to_thread(stack.down, (name,))
    try:
        yield
    finally:
        await asyncio.to_thread(stack.up, (name,))
