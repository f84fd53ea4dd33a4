"""Work that is in-process almost always and needs the network now and then.

Checking a token's signature or opening an envelope takes microseconds once the key is in
memory; fetching that key (the realm's JWKS from Keycloak, a data key from Vault) is a
network call. Such a call takes ``local_only``: with it, it raises ``KeyNotAtHand``
instead of fetching. ``in_place_or_thread`` runs the common case on the event loop and
only the fetching one in a thread; a thread hop for every call cost more than the work
and, with the cores busy, added tens of milliseconds to the slowest answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class KeyNotAtHand(LookupError):
    """A ``local_only`` call would have had to fetch a key over the network."""


async def in_place_or_thread(at_hand: Callable[[], T], fetching: Callable[[], T]) -> T:
    """``at_hand()`` here; if it raises ``KeyNotAtHand``, ``fetching()`` in a thread."""
    try:
        return at_hand()
    except KeyNotAtHand:
        return await asyncio.to_thread(fetching)
