"""Prefixed, time-sortable ids: ``acc_01jdq…``. The prefix says what the id names."""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
PREFIXES = frozenset({"acc", "pay", "cus", "rev", "onb", "txf", "rfd", "we", "evt"})
ID_PATTERN = re.compile(r"^(acc|pay|cus|rev|onb|txf|rfd|we|evt)_[0-9a-z]{26}$")


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """48 bits of milliseconds then 80 random bits, like a ULID: sorts by creation time."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_base32(millis, 10)}{_base32(secrets.randbits(80), 16)}"
