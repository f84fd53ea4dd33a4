"""Suite-wide wiring: tests that restart the stack run after everything else."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("lifecycle") is not None)
