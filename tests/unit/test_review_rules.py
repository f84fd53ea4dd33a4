from __future__ import annotations

from infra.settings import Settings
from models.review import required_approvals


def test_four_eyes_above_the_configured_amount(monkeypatch) -> None:
    monkeypatch.setenv("BFC_FOUR_EYES_THRESHOLD_MINOR", "500000")
    threshold = Settings().four_eyes_threshold_minor
    assert required_approvals(500_000, threshold) == 1
    assert required_approvals(500_001, threshold) == 2
    assert required_approvals(None, threshold) == 1  # onboarding cases carry no amount
