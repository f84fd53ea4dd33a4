"""Customers in PostgreSQL, their personal data envelope-encrypted column-side.

The cipher runs in this process: plaintext personal data exists only in memory here, and
the row holds an envelope whose data key only Vault can unwrap.
"""

from __future__ import annotations

import dataclasses
import json

from sqlmodel import Session

from infra.envelope import EnvelopeCipher
from models.contracts import Address, PersonalData
from models.tables import CustomerRow


def seal(cipher: EnvelopeCipher, data: PersonalData) -> bytes:
    return cipher.encrypt(json.dumps(dataclasses.asdict(data), sort_keys=True).encode())


def unseal(cipher: EnvelopeCipher, envelope: bytes) -> PersonalData:
    fields = json.loads(cipher.decrypt(envelope))
    return PersonalData(**{**fields, "address": Address(**fields["address"])})


def add_customer(
    session: Session,
    cipher: EnvelopeCipher,
    *,
    customer_id: str,
    status: str,
    data: PersonalData,
    user_id: str | None = None,
) -> CustomerRow:
    """Stage a new customer in the session; committed with the caller's transaction."""
    row = CustomerRow(
        id=customer_id,
        user_id=user_id,
        status=status,
        country=data.address.country,
        pii=seal(cipher, data),
    )
    session.add(row)
    session.flush()
    return row


def personal_data_of(session: Session, cipher: EnvelopeCipher, customer_id: str) -> PersonalData:
    row = session.get(CustomerRow, customer_id)
    if row is None:
        raise LookupError(f"no customer {customer_id}")
    return unseal(cipher, row.pii)
