"""Customers' personal data is stored encrypted and read back whole."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from infra.customer_store import add_customer, personal_data_of
from infra.envelope import EnvelopeCipher
from infra.settings import Settings
from infra.vault import connect_vault
from models.contracts import Address, PersonalData
from models.ids import new_id


def maria(marker: str) -> PersonalData:
    return PersonalData(
        given_name="Maria",
        family_name=f"Lindqvist-{marker}",
        date_of_birth="1987-04-12",
        email=f"maria.{marker}@example.org",
        phone="+46701234567",
        address=Address(line1="Storgatan 1", city="Uppsala", postal_code="75320", country="SE"),
        document_type="passport",
        document_number=f"P{marker}",
    )


def test_personal_data_is_ciphertext_in_the_database(
    engine: Engine, cipher: EnvelopeCipher, settings: Settings
) -> None:
    marker = uuid.uuid4().hex[:12]
    customer_id = new_id("cus")
    with Session(engine) as session:
        add_customer(session, cipher, customer_id=customer_id, status="applied", data=maria(marker))
        session.commit()

    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT pii, country FROM customers WHERE id = :id"), {"id": customer_id}
        ).one()
    assert marker.encode() not in bytes(stored.pii)
    assert b"Lindqvist" not in bytes(stored.pii)
    assert stored.country == "SE"  # not personal: stays queryable

    # Another process, a cold cache: Vault unwraps the data key, the data comes back whole.
    reader = EnvelopeCipher(connect_vault(settings), settings)
    with Session(engine) as session:
        assert personal_data_of(session, reader, customer_id) == maria(marker)


def test_the_database_refuses_plaintext_personal_data(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(DBAPIError, match="pii_is_an_envelope"):
        conn.execute(
            text(
                "INSERT INTO customers (id, status, country, pii) "
                "VALUES (:id, 'applied', 'SE', convert_to('{\"given_name\": \"Maria\"}', 'UTF8'))"
            ),
            {"id": new_id("cus")},
        )
