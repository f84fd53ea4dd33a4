"""An app's token that names no client (no ``azp``) must see nothing: ``None`` as its client
would match every payment and application that no app owns."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from api.auth import Principal
from api.errors import ProblemError
from api.routes import onboarding, payments

NAMELESS_APP = Principal(subject="svc", username=None, roles=frozenset({"app"}), client_id=None)
AN_APP = Principal(subject="svc", username=None, roles=frozenset({"app"}), client_id="app-shop")


def customers_own(**fields: Any) -> Any:
    """A row made by a customer directly, not through any app."""
    return SimpleNamespace(customer_id="sub-alice", client_id=None, **fields)


def test_a_nameless_app_sees_no_payment_that_no_app_owns() -> None:
    with pytest.raises(ProblemError) as refused:
        payments._visible(NAMELESS_APP, customers_own(), "pay_1")
    assert refused.value.status == 403
    with pytest.raises(ProblemError) as hidden:  # a named app: simply not its payment
        payments._visible(AN_APP, customers_own(), "pay_1")
    assert hidden.value.status == 404


def test_a_nameless_app_sees_no_application_that_no_app_owns() -> None:
    with pytest.raises(ProblemError) as refused:
        onboarding._visible(NAMELESS_APP, customers_own(), "onb_1")
    assert refused.value.status == 403
