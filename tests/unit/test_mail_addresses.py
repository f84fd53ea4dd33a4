"""The mail-address cache behind the customer mail: one Keycloak lookup per customer per
``ttl``, unknown customers remembered, failures not."""

from __future__ import annotations

import pytest

from infra.identity import MailAddresses, UnknownUser


class Directory:
    """What Keycloak would answer, and how often it was asked."""

    def __init__(self, addresses: dict[str, str | None]) -> None:
        self.addresses = addresses
        self.asked: list[str] = []
        self.down = False

    def lookup(self, customer_id: str) -> str | None:
        self.asked.append(customer_id)
        if self.down:
            raise ConnectionError("keycloak is unreachable")
        if customer_id not in self.addresses:
            raise UnknownUser(customer_id)
        return self.addresses[customer_id]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_looked_up_once_per_ttl() -> None:
    directory, clock = Directory({"cus_a": "a@example.com"}), Clock()
    addresses = MailAddresses(directory.lookup, ttl=60, clock=clock)
    assert [addresses.get("cus_a") for _ in range(5)] == ["a@example.com"] * 5
    assert directory.asked == ["cus_a"]

    directory.addresses["cus_a"] = "new@example.com"
    clock.now += 59
    assert addresses.get("cus_a") == "a@example.com"  # still within the ttl
    clock.now += 1
    assert addresses.get("cus_a") == "new@example.com"
    assert directory.asked == ["cus_a", "cus_a"]


def test_unknown_customers_and_missing_addresses_are_remembered_as_none() -> None:
    directory = Directory({"cus_noaddr": None})
    addresses = MailAddresses(directory.lookup, ttl=60, clock=Clock())
    assert addresses.get("cus_gone") is None
    assert addresses.get("cus_gone") is None
    assert addresses.get("cus_noaddr") is None
    assert addresses.get("cus_noaddr") is None
    assert directory.asked == ["cus_gone", "cus_noaddr"]


def test_a_failed_lookup_is_raised_and_not_remembered() -> None:
    directory = Directory({"cus_a": "a@example.com"})
    addresses = MailAddresses(directory.lookup, ttl=60, clock=Clock())
    directory.down = True
    with pytest.raises(ConnectionError):
        addresses.get("cus_a")
    directory.down = False
    assert addresses.get("cus_a") == "a@example.com"  # asked again, not a cached None
    assert directory.asked == ["cus_a", "cus_a"]


def test_the_oldest_addresses_go_first_past_the_size() -> None:
    directory = Directory({f"cus_{i}": f"{i}@example.com" for i in range(4)})
    addresses = MailAddresses(directory.lookup, ttl=60, size=3, clock=Clock())
    for i in range(4):
        addresses.get(f"cus_{i}")
    addresses.get("cus_3")
    addresses.get("cus_0")  # pushed out by cus_3: asked again
    assert directory.asked == ["cus_0", "cus_1", "cus_2", "cus_3", "cus_0"]
