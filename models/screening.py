"""Sanctions and PEP screening: what one screening of a person found.

A result names the listed entries the person resembles, how closely, by which algorithm and
against which version of the list, so a decision taken on it can be explained later. It holds
the list's names, never the screened person's: it may travel through Temporal and into a
compliance case as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Topic = Literal["sanction", "pep"]


@dataclass(frozen=True)
class ScreeningHit:
    """One listed entry the person resembles."""

    entry_id: str
    # The entry's primary name, and the listed name or alias that matched best.
    entry_name: str
    matched_name: str
    # 0-100, after the birth-date adjustment (see infra.sanctions).
    score: float
    algorithm: str
    # True: a listed birth date agrees; False: none does; None: either side has none.
    birth_date_match: bool | None
    topics: tuple[Topic, ...]


@dataclass(frozen=True)
class ScreeningResult:
    list_version: str
    threshold: float
    algorithm: str
    # Entries scoring at or above the threshold, best first.
    hits: tuple[ScreeningHit, ...]
    # The best score of any entry that came near, hit or not (0.0: nothing came near), so a
    # risk rule can tell "clean" from "just under the threshold".
    best_score: float

    @property
    def possible_match(self) -> bool:
        return bool(self.hits)

    @property
    def topics(self) -> tuple[Topic, ...]:
        """Every topic among the hits: a PEP hit alone calls for other handling than a sanction."""
        found = {topic for hit in self.hits for topic in hit.topics}
        return tuple(topic for topic in ("sanction", "pep") if topic in found)
